"""Loading the model repository: valid variants load with their manifest fields, bad ones fail by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from controller.error import RepositoryError
from controller.repository import load_repository, scan_repository
from letmesh.zoo import build_trivial
from protocol.types import ModelInfo, TensorSpec, VariantSpec


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], bytes]:
    """The identity variant's manifest and artifact bytes, built once by the zoo."""
    root = tmp_path_factory.mktemp("template")
    manifest = build_trivial(root)
    return manifest, (root / "identity" / manifest["artifact"]).read_bytes()


def write_variant(root: Path, folder: str, template: tuple[dict[str, Any], bytes], **changes: Any) -> Path:
    """A variant folder holding the template's artifact and a manifest with ``changes``; returns the manifest path."""
    manifest, blob = template
    path = root / folder
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(blob)
    body = {
        **manifest,
        "variant": folder,
        "artifact": "model.pt",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        **changes,
    }
    (path / "manifest.json").write_text(json.dumps(body))
    return path / "manifest.json"


def test_trivial_repository_loads_with_manifest_fields(tmp_path: Path) -> None:
    manifest = build_trivial(tmp_path)
    variants = load_repository(tmp_path)

    assert list(variants) == ["identity"]
    v = variants["identity"]
    artifact = tmp_path / "identity" / "model.pt"
    assert v.artifact == artifact
    assert v.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest() == manifest["sha256"]
    assert v.size_bytes == artifact.stat().st_size
    assert v.profile_ms == {int(k): float(x) for k, x in manifest["profile_ms"].items()}
    assert v.cost_ms == v.profile_ms[max(v.profile_ms)]

    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 16))
    out = TensorSpec(name="y", datatype="FP32", shape=(-1, 16))
    assert v.spec() == VariantSpec(
        name="identity",
        family="trivial",
        sha256=manifest["sha256"],
        size_bytes=manifest["size_bytes"],
        backend="torchscript",
        max_batch=manifest["max_batch"],
        inputs=(spec,),
        outputs=(out,),
    )
    assert v.info() == ModelInfo(
        name="identity",
        family="trivial",
        accuracy=1.0,
        max_batch=manifest["max_batch"],
        default_slo_ms=float(manifest["default_slo_ms"]),
        inputs=(spec,),
        outputs=(out,),
        version="1",
        energy_j=manifest["energy_j"],
    )


@pytest.mark.parametrize(("backend", "platform"), [("onnx", "onnxruntime_onnx"),
                                                   ("torch_export", "pytorch_torch_export"),
                                                   ("openvino", "openvino")])
def test_other_runtimes_load_and_report_their_v2_platform(tmp_path: Path, template, backend, platform) -> None:
    write_variant(tmp_path, "other", template, backend=backend)

    variant = load_repository(tmp_path)["other"]

    assert variant.spec().backend == backend
    assert variant.info().platform == platform


def test_a_manifest_may_let_openvino_compute_in_bf16_and_the_worker_is_told(tmp_path: Path, template) -> None:
    write_variant(tmp_path, "fast", template, backend="openvino", precision="bf16")
    write_variant(tmp_path, "exact", template, backend="openvino")

    variants = load_repository(tmp_path)

    assert variants["fast"].spec().precision == "bf16"
    assert variants["exact"].spec().precision == "fp32"


@pytest.mark.parametrize(("changes", "says"), [
    ({"backend": "onnx", "precision": "bf16"}, "precision 'bf16' is served by backend 'openvino' only, not 'onnx'"),
    ({"precision": "bf16"}, "precision 'bf16' is served by backend 'openvino' only, not 'torchscript'"),
    ({"backend": "openvino", "precision": "fp8"}, "precision 'fp8' is not one of fp32, bf16"),
    ({"backend": "openvino", "precision": ["bf16"]}, "precision \\['bf16'\\] is not one of"),
])
def test_a_precision_no_runtime_serves_is_a_manifest_error(tmp_path: Path, template, changes, says) -> None:
    manifest = write_variant(tmp_path, "odd", template, **changes)

    with pytest.raises(RepositoryError, match=says) as raised:
        load_repository(tmp_path)

    assert str(manifest) in str(raised.value)


def test_every_variant_folder_loads_by_variant_name(tmp_path: Path, template) -> None:
    write_variant(tmp_path, "b-folder", template, variant="beta", family="fam", accuracy=0.5, max_batch=4)
    write_variant(tmp_path, "a-folder", template, variant="alpha", family="fam", accuracy=0.9, version="7")

    variants = load_repository(tmp_path)

    assert sorted(variants) == ["alpha", "beta"]
    assert variants["alpha"].info().version == "7"
    assert variants["alpha"].info().accuracy == 0.9
    assert variants["beta"].spec().max_batch == 4
    assert variants["beta"].artifact == tmp_path / "b-folder" / "model.pt"


def _sha_mismatch(root: Path, template) -> Path:
    return write_variant(root, "bad", template, sha256="0" * 64)


def _missing_artifact(root: Path, template) -> Path:
    manifest = write_variant(root, "bad", template)
    (manifest.parent / "model.pt").unlink()
    return manifest


def _escaping_artifact(root: Path, template) -> Path:
    # The escaping file exists and its sha256 matches: only the path is wrong.
    (root / "x").write_bytes(template[1])
    return write_variant(root, "bad", template, artifact="../x")


def _absolute_artifact(root: Path, template) -> Path:
    (root / "x").write_bytes(template[1])
    return write_variant(root, "bad", template, artifact=str((root / "x").resolve()))


def _unsupported_datatype(root: Path, template) -> Path:
    return write_variant(root, "bad", template, inputs=[{"name": "x", "datatype": "BYTES", "shape": [-1, 16]}])


def _unsupported_backend(root: Path, template) -> Path:
    return write_variant(root, "bad", template, backend="tensorflow_savedmodel")


def _zero_max_batch(root: Path, template) -> Path:
    return write_variant(root, "bad", template, max_batch=0)


def _no_outputs(root: Path, template) -> Path:
    return write_variant(root, "bad", template, outputs=[])


def _missing_accuracy(root: Path, template) -> Path:
    manifest = write_variant(root, "bad", template)
    body = json.loads(manifest.read_text())
    del body["accuracy"]
    manifest.write_text(json.dumps(body))
    return manifest


def _not_json(root: Path, template) -> Path:
    manifest = write_variant(root, "bad", template)
    manifest.write_text("{not json")
    return manifest


def _json_list(root: Path, template) -> Path:
    manifest = write_variant(root, "bad", template)
    manifest.write_text("[1, 2]")
    return manifest


@pytest.mark.parametrize(
    ("make_bad", "says"),
    [
        (_sha_mismatch, "sha256"),
        (_missing_artifact, "missing"),
        (_escaping_artifact, "beside"),
        (_absolute_artifact, "beside"),
        (_unsupported_datatype, "BYTES"),
        (_unsupported_backend, "tensorflow_savedmodel"),
        (_zero_max_batch, "max_batch"),
        (_no_outputs, "outputs"),
        (_missing_accuracy, "missing field 'accuracy'"),
        (_not_json, ""),
        (_json_list, ""),
    ],
    ids=lambda p: getattr(p, "__name__", p).lstrip("_"),
)
def test_bad_variant_fails_the_load_naming_its_manifest(tmp_path: Path, template, make_bad, says: str) -> None:
    write_variant(tmp_path, "good", template)  # a valid neighbour does not hide the bad one
    manifest = make_bad(tmp_path, template)

    with pytest.raises(RepositoryError) as raised:
        load_repository(tmp_path)

    assert str(manifest) in str(raised.value)
    assert says in str(raised.value)


@pytest.mark.parametrize("field", ["family", "variant", "artifact", "sha256"])
def test_empty_string_field_error_names_its_manifest(tmp_path: Path, template, field: str) -> None:
    manifest = write_variant(tmp_path, "bad", template, **{field: ""})

    with pytest.raises(RepositoryError) as raised:
        load_repository(tmp_path)

    assert str(manifest) in str(raised.value)


def test_duplicate_variant_name_fails_naming_the_second_manifest(tmp_path: Path, template) -> None:
    write_variant(tmp_path, "a", template, variant="same")
    second = write_variant(tmp_path, "b", template, variant="same")

    with pytest.raises(RepositoryError, match="twice") as raised:
        load_repository(tmp_path)

    assert str(second) in str(raised.value)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "no-manifest-here").mkdir()
    with pytest.raises(RepositoryError, match="holds no"):
        load_repository(tmp_path)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a folder"):
        load_repository(tmp_path / "absent")


def _truncated_with_matching_sha(root: Path, template) -> Path:
    manifest = write_variant(root, "bad", template)
    blob = (root / "bad" / "model.pt").read_bytes()[:-200]
    (root / "bad" / "model.pt").write_bytes(blob)
    body = json.loads(manifest.read_text())
    body["sha256"] = hashlib.sha256(blob).hexdigest()
    manifest.write_text(json.dumps(body))
    return manifest


def _flipped_byte(root: Path, template) -> Path:
    manifest = write_variant(root, "bad", template)
    blob = bytearray((root / "bad" / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (root / "bad" / "model.pt").write_bytes(bytes(blob))
    return manifest


@pytest.mark.parametrize(("make_bad", "says"), [
    (_flipped_byte, "sha256"), (_truncated_with_matching_sha, "archive"), (_missing_artifact, "missing"),
    (_not_json, "Expecting"),
], ids=lambda p: getattr(p, "__name__", p).lstrip("_"))
def test_a_scan_sets_a_bad_variant_aside_with_its_reason_and_keeps_the_rest(tmp_path: Path, template, make_bad,
                                                                           says: str) -> None:
    write_variant(tmp_path, "good", template)
    write_variant(tmp_path, "also-good", template)
    manifest = make_bad(tmp_path, template)
    repo = scan_repository(tmp_path)
    assert sorted(repo.variants) == ["also-good", "good"]
    assert list(repo.unavailable) == ["bad"]
    assert str(manifest) in repo.unavailable["bad"] and says in repo.unavailable["bad"]
    with pytest.raises(RepositoryError, match=says):
        load_repository(tmp_path)  # the strict form still refuses it


def test_a_scan_with_nothing_usable_is_an_error_naming_the_reasons(tmp_path: Path, template) -> None:
    _flipped_byte(tmp_path, template)
    with pytest.raises(RepositoryError, match="no usable variant.*sha256"):
        scan_repository(tmp_path)


def test_a_variant_whose_tensors_differ_from_its_family_is_set_aside_with_the_reason(
        tmp_path: Path, template: tuple[dict[str, Any], bytes]) -> None:
    renamed = [{"name": "z", "datatype": "FP32", "shape": [-1, 16]}]
    write_variant(tmp_path, "a-odd", template, family="fam", inputs=renamed)
    write_variant(tmp_path, "b-one", template, family="fam")
    write_variant(tmp_path, "c-two", template, family="fam")
    write_variant(tmp_path, "d-out", template, family="fam", outputs=[{"name": "y", "datatype": "FP64",
                                                                        "shape": [-1, 16]}])
    write_variant(tmp_path, "e-alone", template, family="other", inputs=renamed)

    repo = scan_repository(tmp_path)

    # The inputs and outputs most of the family share stand, though "a-odd" comes first by name.
    assert sorted(repo.variants) == ["b-one", "c-two", "e-alone"]
    assert sorted(repo.unavailable) == ["a-odd", "d-out"]
    assert "inputs z:FP32:-1,16 differ from x:FP32:-1,16 of 'b-one' in family 'fam'" in repo.unavailable["a-odd"]
    assert "outputs y:FP64:-1,16 differ from y:FP32:-1,16" in repo.unavailable["d-out"]
    assert "inputs x:" not in repo.unavailable["d-out"]


def test_a_tie_in_a_family_keeps_the_first_variant_by_name(tmp_path: Path,
                                                           template: tuple[dict[str, Any], bytes]) -> None:
    write_variant(tmp_path, "b-renamed", template, family="fam",
                  inputs=[{"name": "z", "datatype": "FP32", "shape": [-1, 16]}])
    write_variant(tmp_path, "a-plain", template, family="fam")
    repo = scan_repository(tmp_path)
    assert list(repo.variants) == ["a-plain"] and list(repo.unavailable) == ["b-renamed"]


@pytest.mark.parametrize(("changes", "says"), [
    ({"family": "vision/cls"}, "'family'"),  # would name a file under another folder
    ({"family": "../../escaped"}, "'family'"),
    ({"max_batch": 1e999}, "max_batch"),  # infinity in JSON's number syntax
    ({"max_batch": 2 ** 64}, "max_batch"),  # past what the routing table can carry
    ({"max_batch": 2.5}, "max_batch"),
    ({"accuracy": 5}, "'accuracy'"), ({"accuracy": -1}, "'accuracy'"), ({"accuracy": "0.9"}, "'accuracy'"),
    ({"default_slo_ms": 0}, "'default_slo_ms'"), ({"default_slo_ms": -5}, "'default_slo_ms'"),
    ({"energy_j": -1}, "'energy_j'"),
    ({"profile_ms": {"1": -2.0}}, "'profile_ms'"), ({"profile_ms": {"0": 1.0}}, "profile_ms"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -16]}]}, "shape"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 0]}]}, "shape"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1] * 9}]}, "shape"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}] * 2}, "twice"),
], ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else v)
def test_a_manifest_with_a_value_out_of_range_is_set_aside_with_the_reason(tmp_path: Path, template, changes,
                                                                           says: str) -> None:
    write_variant(tmp_path, "good", template)
    manifest = write_variant(tmp_path, "bad", template, **changes)
    if changes.get("max_batch") == 1e999:  # json.dumps writes Infinity; a manifest would say 1e999
        manifest.write_text(manifest.read_text().replace("Infinity", "1e999"))
    repo = scan_repository(tmp_path)
    assert list(repo.variants) == ["good"]
    assert says in repo.unavailable["bad"], repo.unavailable["bad"]


def test_a_manifest_nested_past_what_json_can_read_is_set_aside(tmp_path: Path, template) -> None:
    write_variant(tmp_path, "good", template)
    manifest = write_variant(tmp_path, "bad", template)
    manifest.write_text('{"variant": "bad", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    repo = scan_repository(tmp_path)
    assert list(repo.variants) == ["good"] and "bad" in repo.unavailable


def test_a_variant_without_a_batch_dimension_runs_one_request_at_a_time(tmp_path: Path, template) -> None:
    """Its requests never stack, so it is planned at batch 1 whatever max_batch its manifest gives."""
    write_variant(tmp_path, "flat", template, max_batch=8,
                  inputs=[{"name": "x", "datatype": "FP32", "shape": [16]}],
                  outputs=[{"name": "y", "datatype": "FP32", "shape": [16]}])
    write_variant(tmp_path, "rows", template, max_batch=8, family="other")
    variants = load_repository(tmp_path)
    assert variants["flat"].spec().max_batch == 1
    assert variants["rows"].spec().max_batch == 8


@pytest.mark.parametrize("field", ["variant", "family"])
def test_a_name_ending_in_a_newline_is_refused(tmp_path: Path, template, field: str) -> None:
    """A name becomes a folder, a file of the bandit's, a URL path and log lines: only whole
    matches of the name pattern pass (``$`` let one trailing newline through)."""
    write_variant(tmp_path, "ok", template)
    write_variant(tmp_path, "bad", template, **{field: "bad\n"})
    repo = scan_repository(tmp_path)
    assert list(repo.variants) == ["ok"] and len(repo.unavailable) == 1


def test_a_max_batch_whose_batch_would_not_fit_in_memory_is_refused_by_name(tmp_path: Path, template) -> None:
    """[-1, 3, 224, 224] FP32 is 602,112 bytes a row: 65,536 rows are 36.8 GiB, which a worker would
    allocate at warm-up (and crash-loop on) before serving anything."""
    image = [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    write_variant(tmp_path, "huge", template, max_batch=65536, inputs=image, outputs=image)
    write_variant(tmp_path, "fits", template, max_batch=64, inputs=image, outputs=image, family="other")
    repo = scan_repository(tmp_path)
    assert list(repo.variants) == ["fits"]
    assert "lower max_batch" in repo.unavailable["huge"] and "36.8 GiB" in repo.unavailable["huge"]


def test_a_variant_s_memory_need_is_what_its_manifest_declares_else_its_weights_and_one_batch(tmp_path: Path,
                                                                                             template) -> None:
    write_variant(tmp_path, "declared", template, memory_mb=512)
    write_variant(tmp_path, "estimated", template, max_batch=8)
    variants = load_repository(tmp_path)
    assert variants["declared"].memory_need() == 512 << 20
    estimated = variants["estimated"]
    # The identity model: FP32 inputs and outputs of 16 a row, 8 rows a batch.
    assert estimated.memory_need() == estimated.size_bytes + 8 * (16 + 16) * 4


@pytest.mark.parametrize("value", [-1, "512", float("inf"), 1 << 25])
def test_a_memory_need_that_is_no_size_fails_the_load(tmp_path: Path, template, value) -> None:
    manifest = write_variant(tmp_path, "bad", template, memory_mb=value)
    with pytest.raises(RepositoryError) as raised:
        load_repository(tmp_path)
    assert str(manifest) in str(raised.value) and "memory_mb" in str(raised.value)
