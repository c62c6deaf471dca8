"""Opening one model artifact in the runtime its manifest names: TorchScript, ONNX Runtime, torch.export,
OpenVINO.

Each backend turns a list of numpy inputs (the spec's input order, batched on dim 0) into the
model's outputs in the spec's output order, as numpy arrays or torch tensors. The caller checked
the artifact's sha256 before handing over its path. onnxruntime and openvino are imported only when
an artifact of theirs is opened, so a host serving TorchScript alone needs neither. Imports nothing of ours
beyond ``protocol``, ``agents.error`` and ``agents.probe``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.error import ModelLoadError
from agents.probe import host_cpu_reason
from mesh.archive import native_code
from protocol.types import BACKENDS, DATATYPES, VariantSpec

log = logging.getLogger(__name__)

Run = Callable[[list[np.ndarray]], Sequence[Any]]

# ONNX tensor element types by the OIP datatype a manifest declares.
_ONNX_TYPES = {
    "BOOL": "tensor(bool)", "UINT8": "tensor(uint8)", "UINT16": "tensor(uint16)", "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)", "INT8": "tensor(int8)", "INT16": "tensor(int16)", "INT32": "tensor(int32)",
    "INT64": "tensor(int64)", "FP16": "tensor(float16)", "FP32": "tensor(float)", "FP64": "tensor(double)",
}


def cpu_threads() -> int:
    """Intra-op threads for a CPU partition: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def open_backend(spec: VariantSpec, path: Path, device: str = "cpu") -> Run:
    """The artifact at ``path`` loaded for ``spec.backend``; ModelLoadError names what is wrong."""
    if spec.backend not in BACKENDS:
        raise ModelLoadError(f"variant {spec.name!r}: backend {spec.backend!r} is not one of {', '.join(BACKENDS)}")
    if not Path(path).is_file():
        raise ModelLoadError(f"variant {spec.name!r}: artifact {path} is missing")
    if spec.backend == "onnx":
        return _open_onnx(spec, Path(path), device)
    if spec.backend == "openvino":
        return _open_openvino(spec, Path(path), device)
    if spec.backend == "torch_export":
        return _open_torch_export(spec, Path(path), device)
    return _open_torchscript(spec, Path(path), device)


def _open_torchscript(spec: VariantSpec, path: Path, device: str) -> Run:
    target = torch.device(device)
    with warnings.catch_warnings():
        # TorchScript loading is deprecated upstream (torch 2.13 warns at every load); loading it
        # here is deliberate, so the notice would only repeat in every worker's log.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location=target)
        except Exception as exc:  # torch raises RuntimeError or ValueError for a damaged archive
            raise ModelLoadError(f"variant {spec.name!r}: not a loadable TorchScript archive: {_first_line(exc)}") from None
    module.eval()

    def run(inputs: list[np.ndarray]) -> Sequence[Any]:
        with torch.inference_mode():
            return _torch_outputs(spec, module(*_tensors(inputs, target)))

    return run


def _open_torch_export(spec: VariantSpec, path: Path, device: str) -> Run:
    target = torch.device(device)
    try:
        compiled = native_code(path)
    except Exception as exc:  # not a zip archive at all
        raise ModelLoadError(f"variant {spec.name!r}: not a loadable torch.export program: {_first_line(exc)}") from None
    if compiled:
        raise ModelLoadError(f"variant {spec.name!r}: the torch.export archive carries compiled code "
                             f"({', '.join(compiled[:3])}), which loading would run; export the program without "
                             "AOTInductor")
    try:
        with _weights_only():
            program = torch.export.load(str(path))
    except _PickledObject:
        raise ModelLoadError(f"variant {spec.name!r}: the torch.export archive carries pickled Python objects "
                             "(custom or opaque objects, or weights saved with pickle), which could run any code "
                             "when loaded; re-export it with plain tensor weights") from None
    except Exception as exc:
        raise ModelLoadError(f"variant {spec.name!r}: not a loadable torch.export program: {_first_line(exc)}") from None
    module = program.module().to(target)

    def run(inputs: list[np.ndarray]) -> Sequence[Any]:
        with torch.inference_mode():
            return _torch_outputs(spec, module(*_tensors(inputs, target)))

    return run


class _PickledObject(Exception):
    pass


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """While a torch.export archive loads: every ``torch.load`` is weights-only (tensors and plain
    containers; torch falls back to a full unpickle for payloads it flags or fails to read that
    way) and the archive's other ways to unpickle an object are refused. A worker loads one model
    at a time on its main thread; nothing else of it unpickles meanwhile."""
    real_load = torch.load

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return real_load(f, *args, **kwargs)
        except pickle.UnpicklingError:
            raise _PickledObject() from None

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise _PickledObject()

    patches = ((torch, "load", weights_only_load), (pickle, "loads", refuse), (torch._C, "_pickle_load_obj", refuse))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _tensors(inputs: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # Frames received from ZeroMQ are read-only; the model never writes to its inputs.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in inputs]


def _torch_outputs(spec: VariantSpec, result: Any) -> Sequence[Any]:
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):
        return tuple(result[o.name] for o in spec.outputs)
    return tuple(result)


def _open_onnx(spec: VariantSpec, path: Path, device: str) -> Run:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelLoadError(f"variant {spec.name!r}: backend 'onnx' needs the onnxruntime package") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; a load failure is raised, not logged
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # On a GPU the process holds no cores of its own: one thread, whichever provider computes.
    options.intra_op_num_threads = cpu_threads() if device == "cpu" else 1
    # Idle pool threads would spin on cores the planner counts as free between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if host_cpu_reason("onnx", device):
        # Setting the variant aside would take it off every host. The agent does not profile it on
        # this GPU, so plans place it on a CPU; until then it serves here, on the host.
        log.warning("variant %s: this onnxruntime has no CUDA provider (install onnxruntime-gpu); it runs on "
                    "the host CPU, one thread", spec.name)
    elif device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph, NoSuchFile ...
        raise ModelLoadError(f"variant {spec.name!r}: not a loadable ONNX model: {_first_line(exc)}") from None
    feeds = _bind(spec, "input", spec.inputs, session.get_inputs())
    for spec_input, name in zip(spec.inputs, feeds):
        declared = next(i.type for i in session.get_inputs() if i.name == name)
        if declared != _ONNX_TYPES[spec_input.datatype]:
            raise ModelLoadError(f"variant {spec.name!r}: input {spec_input.name!r} is {spec_input.datatype} in the "
                                 f"manifest but {declared} in the ONNX model")
    fetches = _bind(spec, "output", spec.outputs, session.get_outputs())

    def run(inputs: list[np.ndarray]) -> Sequence[Any]:
        return session.run(fetches, {name: np.ascontiguousarray(a) for name, a in zip(feeds, inputs)})

    return run


# OpenVINO element type names by the OIP datatype a manifest declares.
_OPENVINO_TYPES = {
    "BOOL": "boolean", "UINT8": "u8", "UINT16": "u16", "UINT32": "u32", "UINT64": "u64", "INT8": "i8",
    "INT16": "i16", "INT32": "i32", "INT64": "i64", "FP16": "f16", "FP32": "f32", "FP64": "f64",
}


def _open_openvino(spec: VariantSpec, path: Path, device: str) -> Run:
    """An ONNX artifact compiled by OpenVINO Runtime for this process's cores, batch dimension
    dynamic. ``precision`` "bf16" lets it compute in bfloat16 where the CPU has it; "fp32" keeps
    fp32 (OpenVINO would otherwise pick bf16 by itself on such a CPU). On a CPU without it, bf16
    asked stays fp32: OpenVINO would emulate bfloat16 there (AVX-512 without BF16), rounding as
    bf16 does at no gain in speed, under a runtime label that says fp32."""
    try:
        core, onnx = _openvino()
    except ImportError:
        raise ModelLoadError(f"variant {spec.name!r}: backend 'openvino' needs the openvino package") from None
    if device != "cpu":
        log.warning("variant %s: OpenVINO computes on the CPU; on %s it runs on the host CPU, one thread",
                    spec.name, device)
    try:
        # Read as ONNX, whatever the file's name: guessing, OpenVINO would try every format it knows.
        model = onnx.convert(onnx.load(str(path)))
    except Exception as exc:  # a file that is not an ONNX model it reads
        raise ModelLoadError(f"variant {spec.name!r}: not an ONNX model OpenVINO can read: "
                             f"{_openvino_reason(exc)}") from None
    if not model.outputs:  # an empty file reads as an empty graph
        raise ModelLoadError(f"variant {spec.name!r}: not an ONNX model OpenVINO can read: the graph is empty")
    inputs = [_Port(p.get_any_name(), p.get_element_type().get_type_name()) for p in model.inputs]
    feeds = _bind(spec, "input", spec.inputs, inputs)
    for spec_input, name in zip(spec.inputs, feeds):
        declared = next(p.type for p in inputs if p.name == name)
        if declared != _OPENVINO_TYPES[spec_input.datatype]:
            raise ModelLoadError(f"variant {spec.name!r}: input {spec_input.name!r} is {spec_input.datatype} in the "
                                 f"manifest but {declared} in the ONNX model")
    outputs = [_Port(p.get_any_name(), "") for p in model.outputs]
    fetches = _bind(spec, "output", spec.outputs, outputs)
    config = {
        "INFERENCE_NUM_THREADS": cpu_threads() if device == "cpu" else 1,
        "NUM_STREAMS": 1,  # one batch at a time, on all of the partition's cores
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if spec.precision == "bf16" and openvino_bf16() else "f32",
        "ENABLE_CPU_PINNING": False,  # the agent pins the worker to its gpu-let's cores
    }
    try:
        compiled = core.compile_model(model, "CPU", config)
    except Exception as exc:
        raise ModelLoadError(f"variant {spec.name!r}: OpenVINO could not compile it: {_openvino_reason(exc)}") from None
    request = compiled.create_infer_request()
    feed_at = [[p.name for p in inputs].index(name) for name in feeds]
    # No outputs declared (a model being added, whose outputs are taken from a trial run): all of them.
    fetch_at = [[p.name for p in outputs].index(name) for name in fetches] if fetches else list(range(len(outputs)))

    from openvino import Tensor

    def run(batch: list[np.ndarray]) -> Sequence[Any]:
        # Inputs handed over without a copy (a read-only ZeroMQ frame is copied: OpenVINO may write
        # to what it is given), bypassing OpenVINO's Python dispatch: 20 us less a batch of one
        # small-CNN image. ``held`` keeps each array alive until the run is over.
        held = [a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C") for a in batch]
        try:
            for i, array in zip(feed_at, held):
                request.set_input_tensor(i, Tensor(array, shared_memory=True))
            request.infer()
        except RuntimeError as exc:  # inputs the model does not take: the reason, not the C++ source line
            raise RuntimeError(_openvino_reason(exc)) from None
        # The request's output buffers are reused by its next run: a copy leaves with the reply.
        return [request.get_output_tensor(i).data.copy() for i in fetch_at]

    return run


@functools.cache
def _openvino() -> tuple[Any, Any]:
    """This process's OpenVINO core and ONNX front end (each loads its plugins once)."""
    import openvino as ov
    from openvino.frontend import FrontEndManager

    return ov.Core(), FrontEndManager().load_by_framework("onnx")


def openvino_bf16() -> bool:
    """Does OpenVINO compute bfloat16 on this host's CPU (AMX or AVX-512 BF16)?"""
    core, _ = _openvino()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _openvino_reason(exc: BaseException) -> str:
    """OpenVINO's message without the source locations it opens with ("Exception from ...cpp:84:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return " ".join(told or lines[-1:])[:300] or type(exc).__name__


class _Port:
    __slots__ = ("name", "type")

    def __init__(self, name: str, type_name: str) -> None:
        self.name, self.type = name, type_name


def _bind(spec: VariantSpec, kind: str, declared: Sequence[Any], graph: Sequence[Any]) -> list[str]:
    """Graph tensor names for the manifest's tensors: by name, or by position when no name matches."""
    names = [g.name for g in graph]
    wanted = [d.name for d in declared]
    if set(wanted) <= set(names):
        return wanted
    if len(wanted) == len(names) and not set(wanted) & set(names):
        return names
    raise ModelLoadError(f"variant {spec.name!r}: manifest {kind}s {wanted} do not match the ONNX model's {names}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def check_outputs(spec: VariantSpec, result: Sequence[Any], batch: int) -> None:
    """Do a run's outputs (``batch`` rows in) match the manifest: as many, each of its rank and fixed
    sizes with ``batch`` rows first, and a datatype that converts to the declared one without
    changing kind (FP32 served as FP64 is fine; FP32 as INT8 would serve wrapped numbers)?"""
    result = list(result)
    if len(result) != len(spec.outputs):
        raise ModelLoadError(f"variant {spec.name!r}: the model gives {len(result)} outputs, the manifest declares "
                             f"{len(spec.outputs)}")
    for out_spec, value in zip(spec.outputs, result):
        dtype, shape = _dtype_of(value), tuple(np.shape(value) if not isinstance(value, torch.Tensor) else value.shape)
        declared = np.dtype(DATATYPES[out_spec.datatype])
        # Integers only widen (an int64 argmax over 300 classes declared INT8 would wrap); floats
        # may narrow in precision, not in kind.
        casting = "safe" if dtype is not None and dtype.kind in "biu" and declared.kind in "biu" else "same_kind"
        if dtype is None or not np.can_cast(dtype, declared, casting=casting):
            raise ModelLoadError(f"variant {spec.name!r}: output {out_spec.name!r} is {dtype} from the model but "
                                 f"{out_spec.datatype} in the manifest, which it does not convert to faithfully")
        want = out_spec.shape
        fits = len(shape) == len(want) and all(w == -1 or w == g for w, g in zip(want, shape))
        if fits and out_spec.batched:
            fits = shape[0] == batch
        if not fits:
            raise ModelLoadError(f"variant {spec.name!r}: output {out_spec.name!r} has shape {list(shape)} for "
                                 f"{batch} rows, the manifest declares {list(want)}")


def _dtype_of(value: Any) -> np.dtype | None:
    """The numpy datatype an output converts to (None: one numpy has not, such as bfloat16)."""
    if isinstance(value, torch.Tensor):
        try:
            return torch.empty(0, dtype=value.dtype).numpy().dtype
        except TypeError:
            return None
    return np.asarray(value).dtype


def output_arrays(spec: VariantSpec, result: Sequence[Any]) -> list[np.ndarray]:
    """Outputs as numpy arrays of the datatypes the spec declares."""
    outs = []
    for out_spec, value in zip(spec.outputs, result):
        array = value.detach().to("cpu").numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        outs.append(array.astype(np.dtype(DATATYPES[out_spec.datatype]), copy=False))
    return outs
