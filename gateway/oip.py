"""Open Inference Protocol (KServe V2) request bodies, with Triton's binary tensors.

A pure layer: bytes and model specs in, validated numpy arrays out (``gateway.oip_response``
writes the answers back). The HTTP handlers call it; it opens no socket and knows nothing of
routing. Imports only ``protocol`` of ours (and the JSON fast path beside it), never aiohttp,
zmq or torch.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.json_tensors import Numbers, load_fast
from protocol.codec import DEFAULT_LIMITS
from protocol.types import DATATYPES, TensorSpec

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"

# Nesting allowed in an input's "data"; real tensors rarely exceed rank 8.
MAX_DATA_DEPTH = 32
# Largest single dimension accepted; a bigger one could never arrive within a body size limit.
MAX_DIM = 1 << 32

_UNSUPPORTED = frozenset({"BYTES", "BF16"})
_DTYPES = {name: np.dtype(code) for name, code in DATATYPES.items()}
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
_NON_FINITE = re.compile(rb"-?(?:NaN|Infinity)")
# Python types a JSON leaf may have for each datatype kind (type(), so bool is not an int here).
_LEAF_TYPES = {
    "BOOL": frozenset({bool}),
    "INT": frozenset({int}),
    "FP": frozenset({int, float}),
}
_PARAM_TYPES = (str, int, float, bool)
_TYPE_WORDS = {
    dict: "object", list: "array", str: "string", bool: "bool", type(None): "null",
    int: "integer", float: "float",
}


# --- errors ----------------------------------------------------------------------------------


class OipError(Exception):
    """Root of every failure this layer reports; ``status`` is the HTTP status to answer with."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(OipError):
    """The client sent something the protocol or the model does not accept."""

    status = 400


class MalformedBody(BadRequest):
    """Not JSON, not an object, a field of the wrong type, or binary sizes that do not add up."""


class UnknownTensor(BadRequest):
    """An input or output name the model does not have."""


class DuplicateTensor(BadRequest):
    """The same input or output named twice."""


class MissingInput(BadRequest):
    """A model input the request does not supply."""


class UnsupportedDatatype(BadRequest):
    """A datatype letmesh models never take (BYTES, BF16) or a name that is no datatype."""


class DatatypeMismatch(BadRequest):
    """The input's datatype differs from the model's declared one."""


class ShapeMismatch(BadRequest):
    """The input's shape does not fit the model's spec, or disagrees with its data."""


class InvalidData(BadRequest):
    """Tensor values of the wrong kind, out of range, non-finite, ragged or nested too deep."""


class InvalidBatch(BadRequest):
    """Batch size below 1, above the model's max batch, or different across inputs."""


class InvalidParameter(BadRequest):
    """A parameter value that is not a string, number or bool, or a feature we do not offer."""


class UnencodableOutput(OipError):
    """The model produced an output this layer cannot put in a response (a server fault)."""

    status = 500


# --- request ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated inference request. Arrays decoded from binary data are read-only views."""

    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    requested_outputs: tuple[str, ...]
    binary_outputs: dict[str, bool]
    binary_default: bool


def _load_json(raw: bytes | memoryview) -> Any:
    # orjson: about 7x faster than the standard library on a 3,072-float tensor body, and strict
    # where we want strictness: NaN/Infinity tokens, numbers that overflow a double, nesting past
    # 1,024 levels and lone surrogates are all errors. Integers past 64 bits come back as floats.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        token = _NON_FINITE.search(bytes(raw[max(exc.pos - 1, 0):exc.pos + 9]))
        if token:
            raise InvalidData(f"non-finite number {token.group().decode()} is not valid JSON") from None
        if "infinity when parsed" in str(exc):
            raise InvalidData(f"a number is not finite as a double: {exc}") from None
        if "depth limit" in str(exc):
            raise MalformedBody("JSON nested too deeply") from None
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None


def _kind(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), type(value).__name__)


# Request parameters that may hold a flat object of scalars instead of a scalar.
NESTED_PARAMETERS = frozenset({"letmesh_context"})


def _check_parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedBody(f"{where} parameters must be an object")
    for key, item in value.items():
        if key in NESTED_PARAMETERS and isinstance(item, dict):
            # A flat object of scalars (bandit context features), the one non-scalar we accept.
            _check_parameters(item, f"{where} parameter {key!r}:")
            continue
        if not isinstance(item, _PARAM_TYPES):
            raise InvalidParameter(
                f"{where} parameter {key!r} must be a string, number or bool, got {_kind(item)}"
            )
        if type(item) is float and not math.isfinite(item):
            raise InvalidParameter(f"{where} parameter {key!r} is not finite")
    if "shared_memory_region" in value:
        raise InvalidParameter(f"{where}: shared memory is not supported")
    return value


def _flatten(data: list, name: str) -> tuple[list, set[type]]:
    """Nested rectangular lists -> (flat list of leaves, their types), level by level.

    Iterative, and each level is one pass in C (map, chain), so deep or wide data costs no
    Python work per element and cannot exhaust the stack.
    """
    level = data
    for _ in range(MAX_DATA_DEPTH):
        types = set(map(type, level))
        if list not in types:
            return level, types
        if len(types) > 1:
            raise InvalidData(f"input {name!r} data mixes arrays and values at one level")
        if len(set(map(len, level))) > 1:
            raise InvalidData(f"input {name!r} data is ragged")
        level = list(itertools.chain.from_iterable(level))
    raise InvalidData(f"input {name!r} data is nested deeper than {MAX_DATA_DEPTH}")


def _leaf_kind(datatype: str) -> str:
    if datatype == "BOOL":
        return "BOOL"
    return "FP" if datatype in FLOAT_TYPES else "INT"


def _array_from_json(data: Any, name: str, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An input's JSON data: a nested list, or flat numbers the fast path already read
    (``gateway.json_tensors``); the same checks and errors either way."""
    if datatype == "FP16":
        raise InvalidData(f"input {name!r} is FP16, which JSON cannot carry: send it as binary data")
    kind = _leaf_kind(datatype)
    if isinstance(data, Numbers):
        flat: list | np.ndarray = data.values
    elif isinstance(data, list):
        flat, types = _flatten(data, name)
    else:
        raise MalformedBody(f"input {name!r} data must be an array")
    count = math.prod(shape)
    if len(flat) != count:
        raise ShapeMismatch(
            f"input {name!r} has {len(flat)} values, shape {list(shape)} needs {count}"
        )
    dtype = _DTYPES[datatype]
    if isinstance(flat, np.ndarray):
        # Read as float64, int64 or uint64: only an integer type's range is left to check.
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and flat.size and not info.min <= flat.min() <= flat.max() <= info.max:
            raise InvalidData(f"input {name!r} has values out of range for {datatype}")
        with np.errstate(over="ignore"):
            array = flat.astype(dtype)
    else:
        bad = types - _LEAF_TYPES[kind]
        if bad:
            found = ", ".join(sorted(_TYPE_WORDS.get(t, t.__name__) for t in bad))
            raise InvalidData(f"input {name!r} of datatype {datatype} has {found} values")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                array = np.array(flat, dtype=dtype)
        except (OverflowError, ValueError, TypeError):
            raise InvalidData(f"input {name!r} has values out of range for {datatype}") from None
    if kind == "FP" and not np.isfinite(array).all():
        raise InvalidData(f"input {name!r} has values that are not finite in {datatype}")
    return array.reshape(shape)


def _check_shape(raw: Any, name: str, spec: TensorSpec, datatype: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(type(d) is int for d in raw):
        raise MalformedBody(f"input {name!r} shape must be an array of integers")
    shape = tuple(raw)
    if any(d < 0 or d > MAX_DIM for d in shape):
        raise ShapeMismatch(f"input {name!r} has invalid shape {list(shape)}")
    # The workers' limit, applied here so that a tensor past it is the client's 400, not a
    # worker's refusal: zero-size tensors included, whose other dimensions may claim anything.
    if math.prod(d for d in shape if d) * _DTYPES[datatype].itemsize > DEFAULT_LIMITS.max_tensor_bytes:
        raise ShapeMismatch(f"input {name!r} of shape {list(shape)} is over the "
                            f"{DEFAULT_LIMITS.max_tensor_bytes >> 20} MiB tensor size limit")
    if len(shape) != len(spec.shape) or any(
        want != -1 and want != got for want, got in zip(spec.shape, shape)
    ):
        raise ShapeMismatch(
            f"input {name!r} has shape {list(shape)}, model expects {list(spec.shape)}"
        )
    return shape


def _check_datatype(raw: Any, name: str, spec: TensorSpec) -> str:
    if not isinstance(raw, str):
        raise MalformedBody(f"input {name!r} datatype must be a string")
    if raw in _UNSUPPORTED:
        raise UnsupportedDatatype(f"input {name!r} has datatype {raw}, which letmesh does not support")
    if raw not in _DTYPES:
        raise UnsupportedDatatype(f"input {name!r} has unknown datatype {raw!r}")
    if raw != spec.datatype:
        raise DatatypeMismatch(
            f"input {name!r} has datatype {raw}, model expects {spec.datatype}"
        )
    return raw


def _has_batch_dim(spec: TensorSpec) -> bool:
    return len(spec.shape) > 0 and spec.shape[0] == -1


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch: int,
) -> ParsedRequest:
    """Body (+ Inference-Header-Content-Length) -> ParsedRequest, or a BadRequest naming why."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if type(header_length) is not int or not 0 <= header_length <= len(body):
            raise MalformedBody(
                f"{HEADER_LENGTH} {header_length!r} is outside the body of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    request = load_fast(header)
    if request is None:
        request = _load_json(header)
    if not isinstance(request, dict):
        raise MalformedBody("request body must be a JSON object")

    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedBody("request id must be a string")
    parameters = _check_parameters(request.get("parameters"), "request")
    binary_default = parameters.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise InvalidParameter("request parameter 'binary_data_output' must be a bool")

    specs = {spec.name: spec for spec in inputs}
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedBody("request 'inputs' must be a non-empty array")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict):
            raise MalformedBody("each input must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise MalformedBody("each input needs a string 'name'")
        spec = specs.get(name)
        if spec is None:
            raise UnknownTensor(f"model has no input {name!r}")
        if name in arrays:
            raise DuplicateTensor(f"input {name!r} is given twice")
        datatype = _check_datatype(item.get("datatype"), name, spec)
        shape = _check_shape(item.get("shape"), name, spec, datatype)
        size = _check_parameters(item.get("parameters"), f"input {name!r}").get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise MalformedBody(f"input {name!r} has neither 'data' nor binary_data_size")
            arrays[name] = _array_from_json(item["data"], name, datatype, shape)
            continue
        if "data" in item:
            raise MalformedBody(f"input {name!r} has both 'data' and binary_data_size")
        if type(size) is not int or size < 0:
            raise MalformedBody(f"input {name!r} binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise MalformedBody(
                f"input {name!r} needs {size} binary bytes, {len(binary) - offset} remain"
            )
        dtype = _DTYPES[datatype]
        count = math.prod(shape)
        if count * dtype.itemsize != size:
            raise ShapeMismatch(
                f"input {name!r} shape {list(shape)} of {datatype} needs "
                f"{count * dtype.itemsize} bytes, binary_data_size is {size}"
            )
        arrays[name] = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        offset += size
    if offset != len(binary):
        raise MalformedBody(
            f"binary data is {len(binary)} bytes, inputs' binary_data_size add up to {offset}"
        )
    for spec in inputs:
        if spec.name not in arrays:
            raise MissingInput(f"input {spec.name!r} is missing")

    _check_batch(arrays, inputs, max_batch)
    requested, binary_outputs = _parse_outputs(request.get("outputs"), outputs, binary_default)
    return ParsedRequest(
        id=request_id,
        inputs={spec.name: arrays[spec.name] for spec in inputs},
        parameters=parameters,
        requested_outputs=requested,
        binary_outputs=binary_outputs,
        binary_default=binary_default,
    )


def _check_batch(
    arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], max_batch: int
) -> None:
    batch: int | None = None
    for spec in inputs:
        if not _has_batch_dim(spec):
            continue
        size = arrays[spec.name].shape[0]
        if size < 1 or size > max_batch:
            raise InvalidBatch(
                f"input {spec.name!r} has batch size {size}, model accepts 1 to max batch {max_batch}"
            )
        if batch is not None and size != batch:
            raise InvalidBatch(
                f"input {spec.name!r} has batch size {size}, other inputs have {batch}"
            )
        batch = size


def _parse_outputs(
    raw: Any, outputs: Sequence[TensorSpec], binary_default: bool
) -> tuple[tuple[str, ...], dict[str, bool]]:
    specs = {spec.name: spec for spec in outputs}
    if raw is None or raw == []:
        return (), {s.name: binary_default or s.datatype == "FP16" for s in outputs}
    if not isinstance(raw, list):
        raise MalformedBody("request 'outputs' must be an array")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MalformedBody("each requested output must be an object with a string 'name'")
        name = item["name"]
        if name not in specs:
            raise UnknownTensor(f"model has no output {name!r}")
        if name in binary:
            raise DuplicateTensor(f"output {name!r} is requested twice")
        params = _check_parameters(item.get("parameters"), f"output {name!r}")
        if "classification" in params:
            raise InvalidParameter(f"output {name!r}: classification is not supported")
        wanted = params.get("binary_data", binary_default)
        if type(wanted) is not bool:
            raise InvalidParameter(f"output {name!r} parameter 'binary_data' must be a bool")
        names.append(name)
        binary[name] = wanted or specs[name].datatype == "FP16"
    return tuple(names), binary


def batch_size_of(parsed: ParsedRequest, inputs: Sequence[TensorSpec]) -> int:
    """The request's batch size: the first dimension of batched inputs, 1 if none is batched."""
    for spec in inputs:
        if _has_batch_dim(spec):
            return int(parsed.inputs[spec.name].shape[0])
    return 1
