"""Open Inference Protocol metadata bodies: the server, a model, and Triton's model configuration.

A pure layer like :mod:`gateway.oip`: model specs in, JSON-ready dicts out. Imports only
``protocol`` of ours, never aiohttp, zmq or torch.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

from protocol.types import ModelInfo, TensorSpec

# Triton's backend for each platform a manifest's backend reports (protocol.types.BACKENDS).
TRITON_BACKENDS = {
    "pytorch_torchscript": "pytorch",
    "pytorch_torch_export": "pytorch",
    "onnxruntime_onnx": "onnxruntime",
    "openvino": "openvino",
}


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The body of GET /v2/models/{name}."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_tensor_metadata(s) for s in inputs],
        "outputs": [_tensor_metadata(s) for s in outputs],
    }


def _version() -> str:
    try:
        return importlib.metadata.version("letmesh")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def server_metadata(extensions: Sequence[str]) -> dict[str, Any]:
    """The body of GET /v2."""
    return {"name": "letmesh", "version": _version(), "extensions": list(extensions)}


def _batched(model: ModelInfo) -> bool:
    # Triton's max_batch_size > 0 means every input and output has an implicit first batch
    # dimension left out of its dims; our specs spell it as a leading -1.
    specs = (*model.inputs, *model.outputs)
    return model.max_batch > 0 and bool(specs) and all(s.shape[:1] == (-1,) for s in specs)


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": dims}


def model_config(name: str, model: ModelInfo, variants: Sequence[ModelInfo] = ()) -> dict[str, Any]:
    """The body of Triton's GET /v2/models/{name}/config: the model configuration as JSON.

    ``model`` gives the shapes (for a family, its most accurate variant: every variant of a family
    takes the same tensors); ``variants`` names a family's variants in ``parameters``. Triton
    writes parameters as ``{"key": {"string_value": "..."}}``.
    """
    batched = _batched(model)
    parameters = {
        "letmesh_family": model.family,
        "letmesh_default_slo_ms": f"{model.default_slo_ms:g}",
    }
    if variants:
        parameters["letmesh_variants"] = ",".join(v.name for v in variants)
    else:
        parameters["letmesh_accuracy"] = f"{model.accuracy:g}"
    config: dict[str, Any] = {
        "name": name,
        "platform": model.platform,
        "backend": TRITON_BACKENDS.get(model.platform, ""),
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": model.max_batch if batched else 0,
        "input": [_config_tensor(s, batched) for s in model.inputs],
        "output": [_config_tensor(s, batched) for s in model.outputs],
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
    }
    if batched:
        # Workers form batches of the requests queued on them (deadline-aware), as Triton's
        # dynamic batcher does.
        config["dynamic_batching"] = {}
    return config
