"""Adding your own model file to a repository: copy it in, write its manifest with the sha256,
and prove it serves before anything in the repository changes.

The variant is assembled in a hidden folder beside the others, checked twice — as the controller
reads it (manifest fields, sha256, archive integrity) and by a real forward pass in its backend at
batch sizes 1 and 2 (the batch dimension must be dynamic) — and only then renamed into place. A
failed check leaves the repository as it was. The forward pass is the caller's ``trial`` (the
worker's runtime lives in ``agents``, which this package may not import).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.error import RepositoryError
from controller.repository import (
    MANIFEST,
    MAX_BATCH,
    MAX_LATENCY_MS,
    NAME,
    Variant,
    check_variant,
    describe_tensors,
    family_mismatch_reason,
    scan_repository,
    standing_variant,
)
from mesh.digest import sha256_file
from protocol.types import BACKENDS, DATATYPES, PRECISIONS, TensorSpec, VariantSpec, serves_precision

# The artifact's name in its variant folder, by backend.
ARTIFACT_NAMES = {"torchscript": "model.pt", "onnx": "model.onnx", "torch_export": "model.pt2",
                  "openvino": "model.onnx"}
# A backend guessed from the file name when none is given.
SUFFIX_BACKENDS = {".onnx": "onnx", ".pt2": "torch_export", ".pt": "torchscript", ".ts": "torchscript",
                   ".torchscript": "torchscript"}
TRIAL_BATCHES = (1, 2)
_DTYPE_NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}

# (spec, artifact path, batch sizes) -> per batch size, the model's outputs as numpy arrays
Trial = Callable[[VariantSpec, Path, Sequence[int]], dict[int, list[np.ndarray]]]


@dataclass(frozen=True, slots=True)
class NewVariant:
    """What the user says about a model file; ``outputs`` empty: taken from the forward pass."""

    name: str
    family: str
    accuracy: float
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()
    backend: str = ""  # "": from the file's suffix
    max_batch: int = 8
    default_slo_ms: float = 100.0
    version: str = "1"
    accuracy_metric: str = "as declared by the user"
    precision: str = "fp32"  # protocol.types.PRECISIONS; other than fp32 with backend openvino only


def parse_tensor(text: str) -> TensorSpec:
    """``NAME:DATATYPE:SHAPE`` (``image:FP32:-1,3,32,32``; -1 a variable dimension, the first one the batch)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise RepositoryError(f"tensor {text!r}: expected NAME:DATATYPE:SHAPE, e.g. image:FP32:-1,64")
    name, datatype, dims = (p.strip() for p in parts)
    datatype = datatype.upper()
    if datatype not in DATATYPES:
        raise RepositoryError(f"tensor {text!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise RepositoryError(f"tensor {text!r}: shape {dims!r} is not a comma-separated list of integers") from None
    if shape[0] != -1:
        raise RepositoryError(f"tensor {text!r}: the first dimension is the batch and must be -1")
    if any(d == 0 or d < -1 for d in shape):
        raise RepositoryError(f"tensor {text!r}: dimensions are positive sizes or -1")
    return TensorSpec(name=name, datatype=datatype, shape=shape)


def add_model(repository: Path | str, model_file: Path | str, new: NewVariant, *, trial: Trial,
              replace: bool = False) -> Variant:
    """Copy ``model_file`` into ``repository/<name>/`` with a manifest, once it loads and runs as declared.

    Raises RepositoryError naming what is wrong; the repository is then unchanged.
    """
    repository, model_file = Path(repository), Path(model_file)
    backend = _checked(new, model_file)
    target = repository / new.name
    declared = _declared_variants(repository)
    if not replace:
        if target.exists():
            raise RepositoryError(f"{target} already exists; choose another --name, or --replace it")
        if new.name in declared:
            raise RepositoryError(f"a variant named {new.name!r} is already in {repository}")
    elif new.name in declared:
        # Replaced where it is declared (its folder may have another name): a new folder beside it
        # would leave two variants of one name, the old one still served.
        target = declared[new.name]
    repository.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=repository, prefix=f".{new.name}.adding-"))
    try:
        os.chmod(stage, 0o755)  # mkdtemp's 0700 would hide the variant from a controller running as another user
        artifact = stage / ARTIFACT_NAMES[backend]
        shutil.copyfile(model_file, artifact)
        os.chmod(artifact, 0o644)
        spec = VariantSpec(name=new.name, family=new.family, sha256=sha256_file(artifact),
                           size_bytes=artifact.stat().st_size, backend=backend, max_batch=new.max_batch,
                           inputs=new.inputs, outputs=new.outputs, precision=new.precision)
        batches = [b for b in TRIAL_BATCHES if b <= new.max_batch]
        try:
            results = trial(spec, artifact, batches)
        except Exception as exc:  # any runtime's error (load, or the forward pass on the declared inputs)
            hint = (" (an ONNX model must hold its weights: export without external data)"
                    if backend in ("onnx", "openvino") and "external" in str(exc).lower() else "")
            if _FIXED_BATCH.search(str(exc)) and new.max_batch > 1:
                hint = (" (its first, batch, dimension is fixed at 1: export it with a dynamic batch dimension, "
                        "or add it with --max-batch 1)")
            if backend in ("torchscript", "torch_export") and _weights_only_file(model_file):
                hint = (" (it holds weights saved with torch.save, not a program: save the model with "
                        "torch.jit.script(model).save(path), or torch.export.save(torch.export.export(...), path))")
            raise RepositoryError(f"{model_file} does not run as declared ({backend}, inputs "
                                  f"{describe_tensors(new.inputs)}): {_first_line(exc)}{hint}") from None
        outputs = _outputs(new.outputs, results, model_file)
        manifest = _manifest(new, backend, artifact, spec.sha256, outputs)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(stage / MANIFEST, 0o644)
        _check_family(repository, check_variant(stage / MANIFEST))  # exactly as the controller will read it
        _swap_in(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return check_variant(target / MANIFEST)


def _checked(new: NewVariant, model_file: Path) -> str:
    if not NAME.fullmatch(new.name):
        raise RepositoryError(f"--name {new.name!r}: letters, digits, '.', '_' and '-' (at most 128), "
                              "starting with a letter or digit")
    if not NAME.fullmatch(new.family):
        raise RepositoryError(f"--family {new.family!r}: letters, digits, '.', '_' and '-' (at most 128), "
                              "starting with a letter or digit")
    if not 0.0 <= new.accuracy <= 1.0:
        raise RepositoryError(f"--accuracy {new.accuracy} must lie in [0, 1]")
    if not 1 <= new.max_batch <= MAX_BATCH:
        raise RepositoryError(f"--max-batch {new.max_batch} must lie in [1, {MAX_BATCH}]")
    if not 0 < new.default_slo_ms <= MAX_LATENCY_MS:
        raise RepositoryError(f"--slo-ms {new.default_slo_ms} must be positive and at most {MAX_LATENCY_MS:.0f}")
    if not new.inputs:
        raise RepositoryError("at least one --input NAME:DATATYPE:SHAPE is needed")
    for kind, specs in (("input", new.inputs), ("output", new.outputs)):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise RepositoryError(f"{kind} names repeat: {names}")
    if not model_file.is_file():
        raise RepositoryError(f"{model_file} is not a file")
    backend = new.backend or SUFFIX_BACKENDS.get(model_file.suffix.lower(), "")
    if not backend:
        raise RepositoryError(f"cannot tell the backend of {model_file.name} from its suffix; give --backend "
                              f"({', '.join(BACKENDS)})")
    if backend not in BACKENDS:
        raise RepositoryError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if new.precision not in PRECISIONS:
        raise RepositoryError(f"--precision {new.precision!r} is not one of {', '.join(PRECISIONS)}")
    if not serves_precision(backend, new.precision):
        raise RepositoryError(f"--precision {new.precision} is served by --backend openvino only, not {backend}")
    return backend


def _check_family(repository: Path, new: Variant) -> None:
    """Refuse a variant whose inputs or outputs differ from those its family in ``repository`` has."""
    try:
        present = scan_repository(repository).variants.values()
    except RepositoryError:  # no variant yet
        return
    members = [v for v in present if v.family == new.family and v.name != new.name]
    if members:
        holder = standing_variant(members)
        if (new.inputs, new.outputs) != (holder.inputs, holder.outputs):
            # Only the names differ (outputs taken from the forward pass are named "output"): say how
            # to give the family's names.
            hint = "".join(
                f"; give --{flag} {f' --{flag} '.join(describe_tensors((t,)) for t in theirs)} to use the family's names"
                for flag, mine, theirs in (("input", new.inputs, holder.inputs), ("output", new.outputs, holder.outputs))
                if mine != theirs and [(t.datatype, t.shape) for t in mine] == [(t.datatype, t.shape) for t in theirs])
            raise RepositoryError(family_mismatch_reason(new, holder) + hint)


def _declared_variants(repository: Path) -> dict[str, Path]:
    """Variant name -> the folder whose manifest declares it (the first by folder name)."""
    names: dict[str, Path] = {}
    for manifest in sorted(repository.glob(f"*/{MANIFEST}")):
        if manifest.parent.name.startswith("."):
            continue
        try:
            name = json.loads(manifest.read_text()).get("variant")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str):
            names.setdefault(name, manifest.parent)
    return names


def _outputs(declared: tuple[TensorSpec, ...], results: dict[int, list[np.ndarray]],
             model_file: Path) -> tuple[TensorSpec, ...]:
    """The declared outputs, checked against every trial batch; or, none declared, what the model returned."""
    first = results[min(results)]
    if not declared and not first:
        raise RepositoryError(f"{model_file} gave no output the trial could take as tensors (a model that returns "
                              "a dict does): declare its outputs with --output NAME:DATATYPE:SHAPE, named as the "
                              "dict's keys")
    if not declared:
        declared = tuple(
            TensorSpec(name="output" if len(first) == 1 else f"output_{i}", datatype=_datatype(a, model_file),
                       shape=(-1, *a.shape[1:]))
            for i, a in enumerate(first))
    for batch, arrays in sorted(results.items()):
        if len(arrays) != len(declared):
            raise RepositoryError(f"{model_file} returns {len(arrays)} outputs; {len(declared)} are declared")
        for spec, array in zip(declared, arrays):
            shape = tuple(array.shape)
            expected = (batch, *spec.shape[1:])
            if len(shape) != len(expected) or any(e not in (-1, s) for e, s in zip(expected, shape)):
                raise RepositoryError(f"{model_file}: output {spec.name!r} has shape {list(shape)} for a batch of "
                                      f"{batch}; declared {list(spec.shape)}")
            if _datatype(array, model_file) != spec.datatype:
                raise RepositoryError(f"{model_file}: output {spec.name!r} is {_datatype(array, model_file)}; "
                                      f"declared {spec.datatype}")
    return declared


def _datatype(array: np.ndarray, model_file: Path) -> str:
    name = _DTYPE_NAMES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
    if name is None:
        raise RepositoryError(f"{model_file} returns a {array.dtype} tensor, which the Open Inference Protocol "
                              "cannot carry as a raw tensor")
    return name


def _manifest(new: NewVariant, backend: str, artifact: Path, sha256: str,
              outputs: tuple[TensorSpec, ...]) -> dict[str, Any]:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {
        "family": new.family,
        "variant": new.name,
        "version": new.version,
        "backend": backend,
        "accuracy": new.accuracy,
        "accuracy_metric": new.accuracy_metric,
        "inputs": tensors(new.inputs),
        "outputs": tensors(outputs),
        "max_batch": new.max_batch,
        "default_slo_ms": new.default_slo_ms,
        "artifact": artifact.name,
        "sha256": sha256,
        "size_bytes": artifact.stat().st_size,
        **({"precision": new.precision} if new.precision != "fp32" else {}),
    }


def _swap_in(stage: Path, target: Path) -> None:
    """Rename the checked folder into place; a replaced variant's folder is removed only after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(stage, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ONNX Runtime's words for a batch of several rows given to a model exported for one.
# ONNX Runtime's words, then OpenVINO's, for a first input whose batch dimension is fixed at 1.
_FIXED_BATCH = re.compile(r"index: 0 Got: \d+ Expected: 1\b|index: 0, because the model input \(shape=\[1\b")
_ERROR_CHARS = 500


def _weights_only_file(path: Path) -> bool:
    """Is ``path`` what ``torch.save`` writes (a zip of a pickle and tensor data, without the code
    of a TorchScript archive or the program of a torch.export one)?"""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    program = any("/code/" in n or n.endswith(".json") for n in names)
    return not program and any(n.endswith("/data.pkl") for n in names)


def _first_line(exc: BaseException) -> str:
    """The error's lines when they are few (ONNX Runtime says which dimension is wrong in the
    middle one); of a long one (a TorchScript trace) the first and the last, where it puts the cause."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines)
    if len(text) > _ERROR_CHARS and len(lines) > 2:
        text = " ... ".join(dict.fromkeys([lines[0], lines[-1]]))
    return f"{type(exc).__name__}: {text}"[:_ERROR_CHARS]
