"""Open Inference Protocol (KServe V2) response bodies: outputs as JSON numbers or Triton's binary tensors.

The encoding half of ``gateway.oip`` (which parses requests): a pure layer, numpy arrays and the
parsed request in, bytes and headers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from gateway.oip import (
    BINARY_CONTENT_TYPE,
    FLOAT_TYPES,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    ParsedRequest,
    UnencodableOutput,
)
from protocol.codec import datatype_of
from protocol.types import TensorSpec


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str | TensorSpec, np.ndarray]],
    parsed: ParsedRequest,
    parameters: dict[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """Outputs -> (body, extra headers). Only the requested outputs go out, in request order.

    FP16 outputs, and float outputs holding NaN or infinity, cannot be written as JSON numbers;
    they go as binary data whatever the request asked, which Triton clients read transparently.
    """
    produced = {(key if isinstance(key, str) else key.name): array for key, array in outputs}
    names = parsed.requested_outputs or tuple(produced)
    described: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for name in names:
        array = produced.get(name)
        if array is None:
            raise UnencodableOutput(f"model produced no output {name!r}")
        try:
            datatype = datatype_of(array.dtype)
        except TypeError:
            raise UnencodableOutput(f"output {name!r} has dtype {array.dtype}, not an OIP datatype") from None
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        binary = parsed.binary_outputs.get(name, parsed.binary_default) or datatype == "FP16"
        if not binary and datatype in FLOAT_TYPES and not np.isfinite(array).all():
            binary = True
        if binary:
            data = np.ascontiguousarray(array)
            if data.dtype.byteorder == ">":
                data = data.astype(data.dtype.newbyteorder("<"))
            tensor["parameters"] = {"binary_data_size": data.nbytes}
            chunks.append(memoryview(data).cast("B") if data.size else b"")
        else:
            tensor["data"] = array.ravel().tolist()
        described.append(tensor)

    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = described
    header = orjson.dumps(response)
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    body = b"".join([header, *chunks])
    return body, {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}


def error_body(message: str) -> bytes:
    """The OIP error body for ``message``."""
    return orjson.dumps({"error": message})
