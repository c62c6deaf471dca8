"""The fast JSON path gives every body exactly the outcome the general parser gives.

Each body is parsed twice, once as served (fast path first) and once with the fast path turned
off; the two must agree: the same arrays (dtype, shape, values) and fields, or the same error
class and message. Plus: the plain case does take the fast path.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import oip
from gateway.json_tensors import Numbers, load_fast
from protocol.types import TensorSpec

SPECS = {dt: TensorSpec(name="x", datatype=dt, shape=(-1, 4))
         for dt in ("FP32", "FP64", "INT8", "UINT8", "INT32", "INT64", "UINT64", "BOOL", "FP16")}
OUT = (TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),)


def outcome(body: bytes, datatype: str, monkeypatch: pytest.MonkeyPatch | None = None) -> Any:
    try:
        parsed = oip.parse_infer_request(body, None, (SPECS[datatype],), OUT, max_batch=8)
    except oip.OipError as exc:
        return (type(exc).__name__, str(exc))
    array = parsed.inputs["x"]
    return ("ok", array.dtype.str, array.shape, array.tobytes(), parsed.id, parsed.parameters,
            parsed.requested_outputs, parsed.binary_outputs)


def both(body: bytes, datatype: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = outcome(body, datatype)
    with monkeypatch.context() as m:
        m.setattr(oip, "load_fast", lambda _body: None)
        general = outcome(body, datatype)
    return fast, general


def body_with(data: Any, datatype: str = "FP32", shape: Any = (1, 4), **extra: Any) -> bytes:
    request = {"inputs": [{"name": "x", "datatype": datatype, "shape": list(shape), "data": data}], **extra}
    return json.dumps(request).encode()


CASES = [
    ("floats", body_with([0.5, -1.25, 3.0, 1e-3])),
    ("ints in a float tensor", body_with([1, 2, -3, 4])),
    ("FP64", body_with([0.1, 0.2, 0.3, 1e300], "FP64")),
    ("nested", body_with([[0.5, 1.5, 2.5, 3.5]])),
    ("a one-element array among numbers", body_with([1.0, [2.0], 3.0, 4.0])),
    ("an array ending a flat list", body_with([1.0, 2.0, 3.0, [4.0]])),
    ("ragged", body_with([[1.0, 2.0, 3.0], [4.0]], shape=(2, 2))),
    ("a bool", body_with([1.0, True, 3.0, 4.0])),
    ("a string", body_with([1.0, "2", 3.0, 4.0])),
    ("a null", body_with([1.0, None, 3.0, 4.0])),
    ("an object", body_with([1.0, {"a": 1}, 3.0, 4.0])),
    ("too few", body_with([1.0, 2.0, 3.0])),
    ("empty", body_with([], shape=(0, 4))),
    ("past FP32", body_with([1e39, 0.0, 0.0, 0.0])),
    ("past a double", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1e400,0,0,0]}]}'),
    ("a NaN token", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[NaN,0,0,0]}]}'),
    ("a huge integer", body_with([10**30, 0, 0, 0])),
    ("INT8 in range", body_with([-128, 0, 5, 127], "INT8")),
    ("INT8 out of range", body_with([-129, 0, 5, 127], "INT8")),
    ("UINT8 negative", body_with([-1, 0, 5, 255], "UINT8")),
    ("UINT8 past 255", body_with([256, 0, 5, 255], "UINT8")),
    ("a float in an INT32 tensor", body_with([1.5, 0, 5, 2], "INT32")),
    ("INT64 extremes", body_with([-(2**63), 2**63 - 1, 0, 1], "INT64")),
    ("past INT64", body_with([2**63, 0, 0, 1], "INT64")),
    ("UINT64 top", body_with([2**64 - 1, 0, 0, 1], "UINT64")),
    ("past UINT64", body_with([2**64, 0, 0, 1], "UINT64")),
    ("UINT64 negative", body_with([-1, 0, 0, 1], "UINT64")),
    ("BOOL", body_with([True, False, True, True], "BOOL")),
    ("FP16 in JSON", body_with([1.0, 2.0, 3.0, 4.0], "FP16")),
    ("a mismatched datatype", body_with([1.0, 2.0, 3.0, 4.0], "FP64")),
    ("a byte-order mark", b"\xef\xbb\xbf" + body_with([1.0, 2.0, 3.0, 4.0])),
    ("a duplicated key", b'{"id":"a","id":"b","inputs":[{"name":"x","datatype":"FP32","shape":[1,4],'
                         b'"data":[1,2,3,4]}]}'),
    ("a duplicated data", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4],'
                          b'"data":[5,6,7,8]}]}'),
    ("a bracket in a string", body_with([1.0, 2.0, 3.0, 4.0], id="[x]")),
    ("parameters and outputs", body_with([1.0, 2.0, 3.0, 4.0], id="r1", parameters={"letmesh_slo_ms": 50},
                                         outputs=[{"name": "y", "parameters": {"binary_data": True}}])),
    ("a context", body_with([1.0, 2.0, 3.0, 4.0], parameters={"letmesh_context": {"u": 1, "v": "a"}})),
    ("data not an array", body_with(3.0)),
    ("inputs not an array", b'{"inputs":{"name":"x"}}'),
    ("an input not an object", b'{"inputs":[[1,2,3,4]]}'),
    ("not an object", b"[1,2,3]"),
    ("trailing content", body_with([1.0, 2.0, 3.0, 4.0]) + b" x"),
    ("a lone surrogate", b'{"id":"\\ud800","inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'),
    ("invalid UTF-8", b'{"id":"\xff","inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'),
    ("deep parameters", b'{"parameters":{"a":' + b"[" * 2000 + b"]" * 2000 + b'},"inputs":[]}'),
]


@pytest.mark.parametrize(("case", "body"), CASES, ids=[c for c, _ in CASES])
def test_the_fast_path_agrees_with_the_general_parser(case: str, body: bytes, monkeypatch) -> None:
    found = re.search(rb'"datatype": ?"(\w+)"', body)
    datatype = found.group(1).decode() if found else "FP32"
    fast, general = both(body, datatype, monkeypatch)
    assert fast == general


def test_a_plain_body_takes_the_fast_path_and_reads_the_same_numbers() -> None:
    x = np.random.default_rng(0).standard_normal(3 * 8 * 8).astype(np.float32)
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": x.tolist()}]})
    request = load_fast(body)
    assert request is not None
    data = request["inputs"][0]["data"]
    assert isinstance(data, Numbers) and data.values.dtype == np.float64
    np.testing.assert_array_equal(data.values.astype(np.float32), x)


def test_what_one_body_read_stays_intact_while_the_kept_parser_reads_the_next(monkeypatch) -> None:
    import threading

    import simdjson

    from gateway import json_tensors

    def plain(seed: int, size: int) -> tuple[np.ndarray, bytes]:
        x = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
        return x, orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, size], "data": x.tolist()}],
                                "parameters": {"seed": seed}})

    (x1, body1), (x2, body2) = plain(1, 4096), plain(2, 64)
    first = load_fast(body1)
    assert load_fast(b'{"inputs": [1,') is None  # a body that fails midway leaves the parser usable
    second = load_fast(body2)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first["inputs"][0]["data"].values.astype(np.float32), x1)
    np.testing.assert_array_equal(second["inputs"][0]["data"].values.astype(np.float32), x2)
    assert (first["parameters"], second["parameters"]) == ({"seed": 1}, {"seed": 2})

    # A parser some object still refers to is replaced, not left refusing every later body.
    stuck = simdjson.Parser()
    held = stuck.parse(b'{"a": [1]}')
    monkeypatch.setattr(json_tensors._local, "parser", stuck)
    assert load_fast(body2)["parameters"] == {"seed": 2}
    assert json_tensors._local.parser is not stuck and held["a"].as_list() == [1]

    # Threads (large bodies parse off the event loop) each read with their own parser.
    results: list = [None] * 8
    bodies = [plain(10 + i, 512) for i in range(8)]

    def read(i: int) -> None:
        for _ in range(20):
            got = load_fast(bodies[i][1])
            assert got is not None
            np.testing.assert_array_equal(got["inputs"][0]["data"].values.astype(np.float32), bodies[i][0])
        results[i] = True

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [True] * 8

    # Past the kept parser's limit a body is read by a parser of its own, with the same answer.
    monkeypatch.setattr(json_tensors, "REUSE_MAX_BYTES", 100)
    kept = json_tensors._local.parser
    np.testing.assert_array_equal(load_fast(body1)["inputs"][0]["data"].values.astype(np.float32), x1)
    assert json_tensors._local.parser is kept


def test_bodies_outside_the_plain_case_are_left_to_the_general_parser() -> None:
    assert load_fast(body_with([1.0, [2.0], 3.0, 4.0])) is None  # nested inside flat data
    assert load_fast(body_with([[1.0, 2.0, 3.0, 4.0]])) is None  # nested data
    assert load_fast(body_with([1.0, 2.0, 3.0, 4.0], id="[")) is None  # a bracket the count cannot place
    assert load_fast(b"\xef\xbb\xbf" + body_with([1.0, 2.0, 3.0, 4.0])) is None
    assert load_fast(b'{"a":') is None


_leaf = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False, width=64),
                  st.booleans(), st.none(), st.text(max_size=3))
_data = st.one_of(st.lists(_leaf, max_size=6), st.lists(st.one_of(_leaf, st.lists(_leaf, max_size=2)), max_size=6))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_data, datatype=st.sampled_from(sorted(SPECS)), rows=st.integers(0, 2))
def test_any_data_gets_the_same_answer_both_ways(data, datatype, rows, monkeypatch) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [rows, 4], "data": data}]},
                        option=orjson.OPT_PASSTHROUGH_SUBCLASS) if _fits_orjson(data) else body_with(data, datatype, (rows, 4))
    fast, general = both(body, datatype, monkeypatch)
    assert fast == general


def _fits_orjson(data: Any) -> bool:
    try:
        orjson.dumps(data)
        return True
    except TypeError:
        return False  # integers past 64 bits: json writes them
