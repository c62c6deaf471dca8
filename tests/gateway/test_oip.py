"""Open Inference Protocol bodies: requests built and responses read by tritonclient itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.oip import (
    HEADER_LENGTH,
    MAX_DATA_DEPTH,
    BadRequest,
    DatatypeMismatch,
    DuplicateTensor,
    InvalidBatch,
    InvalidData,
    InvalidParameter,
    MalformedBody,
    MissingInput,
    OipError,
    ParsedRequest,
    ShapeMismatch,
    UnencodableOutput,
    UnknownTensor,
    UnsupportedDatatype,
    batch_size_of,
    parse_infer_request,
)
from gateway.oip_response import encode_infer_response, error_body
from protocol.codec import datatype_of
from protocol.types import DATATYPES, TensorSpec

IMAGE = TensorSpec(name="image", datatype="FP32", shape=(-1, 2, 3))
SCALE = TensorSpec(name="scale", datatype="FP64", shape=(1,))
INPUTS = (IMAGE, SCALE)
LOGITS = TensorSpec(name="logits", datatype="FP32", shape=(-1, 4))
LABEL = TensorSpec(name="label", datatype="INT64", shape=(-1,))
HALF = TensorSpec(name="half", datatype="FP16", shape=(-1, 2))
OUTPUTS = (LOGITS, LABEL, HALF)
MAX_BATCH = 4


def client_body(inputs, outputs=None, request_id="", parameters=None):
    return httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )


def infer_input(name, array, binary):
    item = httpclient.InferInput(name, list(array.shape), datatype_of(array.dtype))
    return item.set_data_from_numpy(array, binary_data=binary)


def parse(body, header_length=None, inputs=INPUTS, outputs=OUTPUTS, max_batch=MAX_BATCH):
    return parse_infer_request(body, header_length, inputs, outputs, max_batch=max_batch)


def read_response(body, headers):
    length = headers.get(HEADER_LENGTH)
    return httpclient.InferenceServerClient.parse_response_body(
        body, header_length=None if length is None else int(length)
    )


def image_batch(n):
    return np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3) / 7


SCALE_VALUE = np.array([0.5], dtype=np.float64)


# --- requests from tritonclient ---------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_request_parses_to_the_sent_arrays(binary):
    image = image_batch(2)
    body, json_size = client_body(
        [infer_input("image", image, binary), infer_input("scale", SCALE_VALUE, binary)],
        outputs=[httpclient.InferRequestedOutput("label", binary_data=False)],
        request_id="req-7",
        parameters={"letmesh_slo_ms": 25.5, "tenant": "a", "strict": True, "budget": 3},
    )
    assert (json_size is not None) == binary
    parsed = parse(body, json_size)
    assert parsed.id == "req-7"
    assert list(parsed.inputs) == ["image", "scale"]
    np.testing.assert_array_equal(parsed.inputs["image"], image)
    assert parsed.inputs["image"].dtype == np.float32
    np.testing.assert_array_equal(parsed.inputs["scale"], SCALE_VALUE)
    assert parsed.parameters == {"letmesh_slo_ms": 25.5, "tenant": "a", "strict": True, "budget": 3}
    assert parsed.requested_outputs == ("label",)
    assert parsed.binary_outputs == {"label": False}
    assert batch_size_of(parsed, INPUTS) == 2


def test_mixed_binary_and_json_inputs_in_one_request():
    image = image_batch(3)
    body, json_size = client_body(
        [infer_input("scale", SCALE_VALUE, False), infer_input("image", image, True)]
    )
    parsed = parse(body, json_size)
    np.testing.assert_array_equal(parsed.inputs["image"], image)
    np.testing.assert_array_equal(parsed.inputs["scale"], SCALE_VALUE)


def test_triton_timeout_and_priority_are_kept_as_given():
    body, size = httpclient.InferenceServerClient.generate_request_body(
        [infer_input("image", image_batch(1), True), infer_input("scale", SCALE_VALUE, True)],
        priority=2,
        timeout=15000,
    )
    parsed = parse(body, size)
    assert parsed.parameters["timeout"] == 15000
    assert parsed.parameters["priority"] == 2


def test_no_outputs_requested_means_all_outputs_binary_as_tritonclient_asks():
    body, size = client_body(
        [infer_input("image", image_batch(1), True), infer_input("scale", SCALE_VALUE, True)]
    )
    parsed = parse(body, size)
    assert parsed.requested_outputs == ()
    assert parsed.binary_default is True
    assert parsed.binary_outputs == {"logits": True, "label": True, "half": True}


def test_per_output_binary_flag_overrides_request_default():
    request = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 2, 3], "data": [0] * 6},
            {"name": "scale", "datatype": "FP64", "shape": [1], "data": [1.0]},
        ],
        "outputs": [
            {"name": "label", "parameters": {"binary_data": False}},
            {"name": "logits"},
            {"name": "half", "parameters": {"binary_data": False}},
        ],
        "parameters": {"binary_data_output": True},
    }
    parsed = parse(json.dumps(request).encode())
    assert parsed.requested_outputs == ("label", "logits", "half")
    # FP16 cannot be written as JSON numbers, so it stays binary whatever was asked.
    assert parsed.binary_outputs == {"label": False, "logits": True, "half": True}


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("binary", [False, True])
def test_every_numeric_datatype_round_trips(datatype, binary):
    dtype = np.dtype(DATATYPES[datatype])
    if dtype.kind == "b":
        array = np.array([[True, False, True], [False, False, True]])
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    else:
        info = np.finfo(dtype)
        array = np.array([[info.min, info.max, 0.0], [-1.5, info.tiny, 1 / 3]], dtype=dtype)
    spec = TensorSpec(name="x", datatype=datatype, shape=(-1, 3))
    body, size = client_body([infer_input("x", array, binary)])
    if datatype == "FP16" and not binary:
        with pytest.raises(InvalidData, match="FP16"):
            parse(body, size, inputs=[spec], outputs=[spec])
        return
    parsed = parse(body, size, inputs=[spec], outputs=[spec])
    got = parsed.inputs["x"]
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, array)

    out_body, headers = encode_infer_response(
        model_name="m", model_version="1", request_id=None,
        outputs=[("x", got)], parsed=parsed, parameters={},
    )
    np.testing.assert_array_equal(read_response(out_body, headers).as_numpy("x"), array)


def test_nested_and_flat_json_data_give_the_same_array():
    values = list(range(12))
    nested = [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    results = []
    for data in (values, nested):
        request = {"inputs": [
            {"name": "image", "datatype": "FP32", "shape": [2, 2, 3], "data": data},
            {"name": "scale", "datatype": "FP64", "shape": [1], "data": [[2]]},
        ]}
        results.append(parse(json.dumps(request).encode()))
    for parsed in results:
        np.testing.assert_array_equal(parsed.inputs["image"], np.arange(12, dtype=np.float32).reshape(2, 2, 3))
        np.testing.assert_array_equal(parsed.inputs["scale"], [2.0])


@pytest.mark.parametrize("batch", [1, MAX_BATCH])
def test_batch_sizes_within_limit_are_accepted(batch):
    body, size = client_body(
        [infer_input("image", image_batch(batch), True), infer_input("scale", SCALE_VALUE, True)]
    )
    assert batch_size_of(parse(body, size), INPUTS) == batch


def test_batch_size_is_one_when_no_input_is_batched():
    spec = TensorSpec(name="v", datatype="INT32", shape=(3,))
    parsed = parse(json.dumps({"inputs": [
        {"name": "v", "datatype": "INT32", "shape": [3], "data": [1, 2, 3]}]}).encode(),
        inputs=[spec], outputs=[spec])
    assert batch_size_of(parsed, [spec]) == 1


def test_binary_inputs_view_the_body_without_copying():
    image = image_batch(1)
    body, size = client_body([infer_input("image", image, True), infer_input("scale", SCALE_VALUE, True)])
    parsed = parse(body, size)
    assert not parsed.inputs["image"].flags.writeable
    assert np.shares_memory(parsed.inputs["image"], np.frombuffer(body, dtype=np.uint8))


# --- rejected requests ------------------------------------------------------------------------


def good_inputs():
    return [
        {"name": "image", "datatype": "FP32", "shape": [1, 2, 3], "data": [0.5] * 6},
        {"name": "scale", "datatype": "FP64", "shape": [1], "data": [1.0]},
    ]


def with_image(**fields):
    inputs = good_inputs()
    inputs[0].update(fields)
    return {"inputs": inputs}


BAD_JSON = [
    ("not json", b"{", MalformedBody, "not valid JSON"),
    ("array body", b"[1, 2]", MalformedBody, "object"),
    ("invalid utf-8", b"\xff\xfe\x00", MalformedBody, "not valid JSON"),
    ("NaN", b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2, 3], '
     b'"data": [NaN, 0, 0, 0, 0, 0]}]}', InvalidData, "NaN"),
    ("Infinity", b'{"inputs": [], "parameters": {"x": Infinity}}', InvalidData, "Infinity"),
    ("-Infinity", b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2, 3], '
     b'"data": [-Infinity, 0, 0, 0, 0, 0]}]}', InvalidData, "-Infinity"),
    ("overflowing literal", json.dumps(with_image(data=[0.0] * 5 + [1.0])).replace("1.0]", "1e999]").encode(),
     InvalidData, "not finite"),
    ("whole body nested deep", b"[" * 200_000 + b"]" * 200_000, MalformedBody, "nested too deeply"),
]

BAD_REQUESTS = [
    ("no inputs", {}, MalformedBody, "'inputs'"),
    ("empty inputs", {"inputs": []}, MalformedBody, "non-empty"),
    ("inputs not a list", {"inputs": {"image": 1}}, MalformedBody, "'inputs'"),
    ("input not object", {"inputs": [3]}, MalformedBody, "object"),
    ("input name not string", {"inputs": [{"name": 5}]}, MalformedBody, "name"),
    ("unknown input", {"inputs": [*good_inputs(), {"name": "extra", "datatype": "FP32", "shape": [1],
                                                   "data": [1]}]}, UnknownTensor, "'extra'"),
    ("duplicate input", {"inputs": [*good_inputs(), good_inputs()[0]]}, DuplicateTensor, "'image'"),
    ("missing input", {"inputs": good_inputs()[:1]}, MissingInput, "'scale'"),
    ("wrong datatype", with_image(datatype="FP64"), DatatypeMismatch,
     "input 'image' has datatype FP64, model expects FP32"),
    ("BYTES", with_image(datatype="BYTES"), UnsupportedDatatype, "BYTES"),
    ("BF16", with_image(datatype="BF16"), UnsupportedDatatype, "BF16"),
    ("unknown datatype", with_image(datatype="FLOAT"), UnsupportedDatatype, "FLOAT"),
    ("datatype not string", with_image(datatype=1), MalformedBody, "'image' datatype"),
    ("fixed dim differs", with_image(shape=[1, 3, 2]), ShapeMismatch, "model expects [-1, 2, 3]"),
    ("rank differs", with_image(shape=[6]), ShapeMismatch, "'image'"),
    ("negative dim", with_image(shape=[-1, 2, 3]), ShapeMismatch, "'image'"),
    # Integers past 64 bits arrive as floats (orjson), so this is "not an integer", still naming the input.
    ("huge dim", with_image(shape=[1, 2, 2**70]), MalformedBody, "'image' shape"),
    ("shape not list", with_image(shape="1,2,3"), MalformedBody, "'image' shape"),
    ("shape of floats", with_image(shape=[1.0, 2, 3]), MalformedBody, "'image' shape"),
    ("shape of bools", with_image(shape=[True, 2, 3]), MalformedBody, "'image' shape"),
    ("too few values", with_image(data=[0.5] * 5), ShapeMismatch, "'image' has 5 values"),
    ("too many values", with_image(data=[0.5] * 7), ShapeMismatch, "'image' has 7 values"),
    ("strings in FP32", with_image(data=["a"] * 6), InvalidData, "'image' of datatype FP32 has string"),
    ("numeric strings in FP32", with_image(data=["1.5"] * 6), InvalidData, "string"),
    ("bools in FP32", with_image(data=[True] * 6), InvalidData, "bool"),
    ("nulls in FP32", with_image(data=[None] * 6), InvalidData, "null"),
    ("objects in FP32", with_image(data=[{}] * 6), InvalidData, "object"),
    ("FP32 overflow", with_image(data=[1e39] * 6), InvalidData, "not finite in FP32"),
    ("huge int in FP32", with_image(data=[10**400] * 6), InvalidData, "not finite"),
    ("data not a list", with_image(data=1.5), MalformedBody, "'image' data must be an array"),
    ("ragged data", with_image(data=[[1, 2, 3], [4, 5]]), InvalidData, "ragged"),
    ("mixed nesting", with_image(data=[[1, 2, 3], 4, 5, 6]), InvalidData, "mixes"),
    ("deep nesting", with_image(data=json.loads("[" * (MAX_DATA_DEPTH + 8) + "]" * (MAX_DATA_DEPTH + 8))),
     InvalidData, "nested deeper"),
    ("no data", {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2, 3]}, good_inputs()[1]]},
     MalformedBody, "'image' has neither"),
    ("data and binary", with_image(parameters={"binary_data_size": 24}), MalformedBody, "both"),
    ("shared memory", with_image(parameters={"shared_memory_region": "r"}), InvalidParameter, "shared memory"),
    ("batch zero", with_image(shape=[0, 2, 3], data=[]), InvalidBatch, "max batch 4"),
    ("batch too big", with_image(shape=[5, 2, 3], data=[0] * 30), InvalidBatch, "max batch 4"),
    ("id not string", {"id": 7, "inputs": good_inputs()}, MalformedBody, "id"),
    ("parameters not object", {"parameters": [1], "inputs": good_inputs()}, MalformedBody, "parameters"),
    ("parameter list", {"parameters": {"p": [1]}, "inputs": good_inputs()}, InvalidParameter, "'p'"),
    ("parameter null", {"parameters": {"p": None}, "inputs": good_inputs()}, InvalidParameter, "'p'"),
    ("parameter object", {"parameters": {"headers": {"a": "b"}}, "inputs": good_inputs()},
     InvalidParameter, "'headers'"),
    ("binary_data_output not bool", {"parameters": {"binary_data_output": 1}, "inputs": good_inputs()},
     InvalidParameter, "binary_data_output"),
    ("unknown output", {"inputs": good_inputs(), "outputs": [{"name": "probs"}]}, UnknownTensor, "'probs'"),
    ("duplicate output", {"inputs": good_inputs(), "outputs": [{"name": "label"}, {"name": "label"}]},
     DuplicateTensor, "'label'"),
    ("outputs not list", {"inputs": good_inputs(), "outputs": {"name": "label"}}, MalformedBody, "outputs"),
    ("output without name", {"inputs": good_inputs(), "outputs": [{}]}, MalformedBody, "name"),
    ("binary_data not bool", {"inputs": good_inputs(), "outputs": [{"name": "label", "parameters": {
        "binary_data": "yes"}}]}, InvalidParameter, "binary_data"),
    ("classification", {"inputs": good_inputs(), "outputs": [{"name": "label", "parameters": {
        "classification": 3}}]}, InvalidParameter, "classification"),
]


def int_input_case(datatype, values, message):
    spec = TensorSpec(name="n", datatype=datatype, shape=(-1,))
    body = json.dumps({"inputs": [{"name": "n", "datatype": datatype, "shape": [len(values)],
                                   "data": values}]}).encode()
    return spec, body, message


INT_CASES = [
    int_input_case("INT32", [1.5, 2], "'n' of datatype INT32 has float"),
    int_input_case("INT32", [True, 2], "bool"),
    int_input_case("INT8", [300], "out of range for INT8"),
    int_input_case("UINT16", [-1], "out of range for UINT16"),
    int_input_case("UINT64", [2**64], "has float values"),  # past 64 bits the JSON number is a float
    int_input_case("BOOL", [1, 0], "'n' of datatype BOOL has integer"),
]


def assert_bad(exc_info, kind, fragment):
    assert isinstance(exc_info.value, kind)
    assert exc_info.value.status == 400
    assert fragment in exc_info.value.message
    assert str(exc_info.value) == exc_info.value.message


@pytest.mark.parametrize("name, body, kind, fragment", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_is_rejected_with_400(name, body, kind, fragment):
    with pytest.raises(BadRequest) as exc_info:
        parse(body)
    assert_bad(exc_info, kind, fragment)


@pytest.mark.parametrize("name, request_, kind, fragment", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_rejected_with_400_naming_the_cause(name, request_, kind, fragment):
    with pytest.raises(BadRequest) as exc_info:
        parse(json.dumps(request_).encode())
    assert_bad(exc_info, kind, fragment)


@pytest.mark.parametrize("spec, body, fragment", INT_CASES, ids=[c[2] for c in INT_CASES])
def test_wrong_kind_or_range_of_values_is_rejected(spec, body, fragment):
    with pytest.raises(InvalidData) as exc_info:
        parse(body, inputs=[spec], outputs=[spec])
    assert_bad(exc_info, InvalidData, fragment)


@pytest.mark.parametrize("shape", [[1, 0, 1 << 25], [1 << 25, 0], [0, 1 << 32, 1 << 32]])
def test_a_zero_size_tensor_claiming_dimensions_past_the_workers_limit_is_a_400(shape):
    # No values to send, but the workers refuse such a tensor: the client hears why, not a 500.
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1,) * len(shape))
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]}).encode()
    with pytest.raises(ShapeMismatch) as exc_info:
        parse(body, inputs=[spec], outputs=[spec], max_batch=1 << 40)
    assert_bad(exc_info, ShapeMismatch, "size limit")


def test_a_zero_size_tensor_within_the_limit_is_accepted():
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, -1, -1))
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 0, 1024], "data": []}]}).encode()
    assert parse(body, inputs=[spec], outputs=[spec]).inputs["x"].shape == (1, 0, 1024)


def test_inputs_disagreeing_on_batch_size_are_rejected():
    a = TensorSpec(name="a", datatype="INT32", shape=(-1,))
    b = TensorSpec(name="b", datatype="INT32", shape=(-1, 2))
    body, size = client_body([infer_input("a", np.zeros(2, np.int32), True),
                              infer_input("b", np.zeros((3, 2), np.int32), True)])
    with pytest.raises(InvalidBatch) as exc_info:
        parse(body, size, inputs=[a, b], outputs=[a])
    assert_bad(exc_info, InvalidBatch, "batch size 3, other inputs have 2")


def binary_request():
    body, size = client_body([infer_input("image", image_batch(1), True),
                              infer_input("scale", SCALE_VALUE, True)])
    return body, size


def binary_request_with(header_edit):
    """A valid binary request whose JSON header is replaced by ``header_edit(header)``."""
    body, size = binary_request()
    header = json.loads(body[:size])
    header_edit(header)
    encoded = json.dumps(header).encode()
    return encoded + body[size:], len(encoded)


def set_image_size(value):
    def edit(header):
        header["inputs"][0]["parameters"]["binary_data_size"] = value
    return edit


def test_binary_size_mismatches_are_rejected():
    body, size = binary_request()
    cases = [
        ((body + b"\x00", size), MalformedBody, "binary data is 33 bytes"),
        ((body[:-1], size), MalformedBody, "needs 8 binary bytes, 7 remain"),
        ((body, size + 1), MalformedBody, "not valid JSON"),
        ((body, len(body) + 1), MalformedBody, "outside the body"),
        ((body, -1), MalformedBody, "outside the body"),
        ((body[:size], None), MalformedBody, "needs 24 binary bytes, 0 remain"),
        (binary_request_with(set_image_size(20)), ShapeMismatch, "needs 24 bytes, binary_data_size is 20"),
        (binary_request_with(set_image_size(-4)), MalformedBody, "non-negative"),
        (binary_request_with(set_image_size(2.5)), MalformedBody, "non-negative integer"),
    ]
    for (raw, length), kind, fragment in cases:
        with pytest.raises(BadRequest) as exc_info:
            parse(raw, length)
        assert_bad(exc_info, kind, fragment)


# --- responses read by tritonclient -----------------------------------------------------------


def parsed_for(outputs=None, binary_default=False, request_id="r1"):
    request = {"id": request_id, "inputs": good_inputs(), "parameters": {"binary_data_output": binary_default}}
    if outputs is not None:
        request["outputs"] = outputs
    return parse(json.dumps(request).encode())


LOGITS_VALUE = (np.arange(8, dtype=np.float32).reshape(2, 4) - 3.25) / 3
LABEL_VALUE = np.array([3, -2**60], dtype=np.int64)
HALF_VALUE = np.array([[0.5, -2.0], [65504.0, 1 / 3]], dtype=np.float16)
PRODUCED = [(LOGITS, LOGITS_VALUE), ("label", LABEL_VALUE), (HALF, HALF_VALUE)]


def test_json_response_has_the_oip_shape():
    parsed = parsed_for(outputs=[{"name": "logits"}, {"name": "label"}])
    body, headers = encode_infer_response(
        model_name="resnet", model_version="2", request_id="r1", outputs=PRODUCED,
        parsed=parsed, parameters={"letmesh_variant": "resnet18", "letmesh_event_id": 9},
    )
    assert headers == {"Content-Type": "application/json"}
    decoded = json.loads(body)
    assert decoded == {
        "model_name": "resnet",
        "model_version": "2",
        "id": "r1",
        "parameters": {"letmesh_variant": "resnet18", "letmesh_event_id": 9},
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [2, 4], "data": LOGITS_VALUE.ravel().tolist()},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, -2**60]},
        ],
    }
    assert b" " not in body
    result = read_response(body, headers)
    np.testing.assert_array_equal(result.as_numpy("logits"), LOGITS_VALUE)
    np.testing.assert_array_equal(result.as_numpy("label"), LABEL_VALUE)
    assert result.as_numpy("half") is None


def test_id_is_left_out_when_the_request_had_none():
    parsed = parsed_for(outputs=[{"name": "label"}], request_id=None)
    body, _ = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                    outputs=PRODUCED, parsed=parsed, parameters={})
    assert "id" not in json.loads(body)


@pytest.mark.parametrize("binary_default", [False, True])
def test_all_outputs_go_when_none_were_requested(binary_default):
    parsed = parsed_for(binary_default=binary_default)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id="r1",
                                          outputs=PRODUCED, parsed=parsed, parameters={})
    # FP16 always forces the binary form, so the header length is always present here.
    header_length = int(headers[HEADER_LENGTH])
    assert headers["Content-Type"] == "application/octet-stream"
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["logits", "label", "half"]
    assert [("data" in o) for o in header["outputs"]] == [not binary_default, not binary_default, False]
    result = read_response(body, headers)
    np.testing.assert_array_equal(result.as_numpy("logits"), LOGITS_VALUE)
    np.testing.assert_array_equal(result.as_numpy("label"), LABEL_VALUE)
    np.testing.assert_array_equal(result.as_numpy("half"), HALF_VALUE)


def test_tritonclient_requested_binary_outputs_come_back_binary_in_request_order():
    body, size = client_body(
        [infer_input("image", image_batch(2), True), infer_input("scale", SCALE_VALUE, True)],
        outputs=[httpclient.InferRequestedOutput("label", binary_data=True),
                 httpclient.InferRequestedOutput("logits", binary_data=False)],
        request_id="abc",
    )
    parsed = parse(body, size)
    out, headers = encode_infer_response(model_name="m", model_version="1", request_id=parsed.id,
                                         outputs=PRODUCED, parsed=parsed, parameters={"k": "v"})
    header_length = int(headers[HEADER_LENGTH])
    header = json.loads(out[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["label", "logits"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": LABEL_VALUE.nbytes}
    assert len(out) == header_length + LABEL_VALUE.nbytes
    result = read_response(out, headers)
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["parameters"] == {"k": "v"}
    np.testing.assert_array_equal(result.as_numpy("label"), LABEL_VALUE)
    np.testing.assert_array_equal(result.as_numpy("logits"), LOGITS_VALUE)


def test_fp16_outputs_go_binary_even_when_the_request_did_not_know_them():
    parsed = parsed_for()
    assert parsed.binary_outputs == {"logits": False, "label": False, "half": True}
    extra = np.array([1.5, -0.25], dtype=np.float16)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("label", LABEL_VALUE), ("extra", extra)],
                                          parsed=parsed, parameters={})
    header = json.loads(body[:int(headers[HEADER_LENGTH])])
    assert header["outputs"][0]["data"] == LABEL_VALUE.tolist()
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 4}
    np.testing.assert_array_equal(read_response(body, headers).as_numpy("extra"), extra)


def test_non_finite_float_outputs_go_binary_rather_than_as_invalid_json():
    parsed = parsed_for(outputs=[{"name": "logits", "parameters": {"binary_data": False}}])
    weird = np.array([[np.nan, np.inf, -np.inf, 1.0]] * 2, dtype=np.float32)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("logits", weird)], parsed=parsed, parameters={})
    assert HEADER_LENGTH in headers
    np.testing.assert_array_equal(read_response(body, headers).as_numpy("logits"), weird)


def test_big_endian_and_strided_outputs_are_sent_little_endian_row_major():
    parsed = parsed_for(outputs=[{"name": "logits", "parameters": {"binary_data": True}}])
    big = LOGITS_VALUE.astype(">f4")
    strided = np.asfortranarray(big)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("logits", strided)], parsed=parsed, parameters={})
    length = int(headers[HEADER_LENGTH])
    assert body[length:] == LOGITS_VALUE.astype("<f4").tobytes()
    np.testing.assert_array_equal(read_response(body, headers).as_numpy("logits"), LOGITS_VALUE)


def test_empty_output_round_trips_binary():
    parsed = parsed_for(outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    empty = np.zeros(0, dtype=np.int64)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("label", empty)], parsed=parsed, parameters={})
    assert read_response(body, headers).as_numpy("label").shape == (0,)


def test_outputs_the_server_cannot_encode_are_server_errors():
    parsed = parsed_for(outputs=[{"name": "label"}])
    with pytest.raises(UnencodableOutput) as missing:
        encode_infer_response(model_name="m", model_version="1", request_id=None,
                              outputs=[("logits", LOGITS_VALUE)], parsed=parsed, parameters={})
    assert missing.value.status == 500 and "'label'" in missing.value.message
    with pytest.raises(UnencodableOutput) as wrong_dtype:
        encode_infer_response(model_name="m", model_version="1", request_id=None,
                              outputs=[("label", np.array(["x"]))], parsed=parsed, parameters={})
    assert wrong_dtype.value.status == 500


def test_the_error_body_is_an_object_with_the_message():
    assert json.loads(error_body("input 'x' is missing")) == {"error": "input 'x' is missing"}


# --- fuzz -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)
names = st.sampled_from(["image", "scale", "logits", "label", "half", "x", ""])
datatypes = st.sampled_from([*DATATYPES, "BYTES", "BF16", "fp32", ""]) | json_leaf
shapes = st.lists(st.integers(-2, 8), max_size=4) | json_value
data = (st.lists(st.floats(allow_nan=False, width=32) | st.integers(-300, 300), max_size=30)
        | st.lists(st.lists(st.integers(0, 3) | st.booleans(), min_size=3, max_size=3), max_size=4)
        | json_value)
params = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "timeout", "x"]),
    st.integers(-2, 64) | st.booleans() | json_leaf, max_size=2,
) | json_value
tensor = st.fixed_dictionaries(
    {"name": names},
    optional={"datatype": datatypes, "shape": shapes, "data": data, "parameters": params},
)
request_like = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_value},
    optional={"id": json_leaf, "parameters": params, "outputs": st.lists(tensor, max_size=3) | json_value},
)


def parse_or_reject(body, header_length):
    try:
        parsed = parse(body, header_length)
    except OipError as exc:
        assert exc.status == 400
        return None
    assert isinstance(parsed, ParsedRequest)
    return parsed


@FUZZ
@given(body=st.binary(max_size=512), header_length=st.none() | st.integers(-4, 600))
def test_random_bytes_give_a_request_or_a_400(body, header_length):
    parse_or_reject(body, header_length)


@FUZZ
@given(value=json_value | request_like)
def test_random_json_gives_a_request_or_a_400(value):
    parse_or_reject(json.dumps(value).encode(), None)


@FUZZ
@given(value=request_like, tail=st.binary(max_size=64))
def test_random_json_with_binary_tail_gives_a_request_or_a_400(value, tail):
    header = json.dumps(value).encode()
    parsed = parse_or_reject(header + tail, len(header))
    if parsed is not None:
        body, headers = encode_infer_response(
            model_name="m", model_version="1", request_id=parsed.id,
            outputs=[("logits", LOGITS_VALUE), ("label", LABEL_VALUE), ("half", HALF_VALUE)],
            parsed=parsed, parameters=parsed.parameters,
        )
        read_response(body, headers)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 16), length_shift=st.integers(-3, 3))
def test_corrupted_tritonclient_bodies_give_a_request_or_a_400(edits, cut, length_shift):
    body, size = binary_request()
    raw = bytearray(body)
    for position, byte in edits:
        raw[position % len(raw)] = byte
    raw = raw[:len(raw) - cut]
    parse_or_reject(bytes(raw), size + length_shift)
