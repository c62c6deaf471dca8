"""Adding your own model file to a repository: the manifest the controller reads, with the file's
sha256, written only for a model that loads and runs as declared; anything else changes nothing."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

from agents.model_runner import trial_run
from controller.error import RepositoryError
from controller.model_import import NewVariant, add_model, parse_tensor
from controller.repository import scan_repository
from protocol.types import TensorSpec

FEATURES = TensorSpec(name="features", datatype="FP32", shape=(-1, 6))


class Scorer(torch.nn.Module):
    """Six features in, three class probabilities out."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=1)


class FixedBatch(torch.nn.Module):
    """Serves exactly one row: its batch dimension is not dynamic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, 6) * 2.0


def scorer() -> Scorer:
    torch.manual_seed(7)
    return Scorer().eval()


def export(model: torch.nn.Module, path: Path) -> Path:
    """``model`` saved as the backend its suffix names: TorchScript .pt, ONNX .onnx, torch.export .pt2."""
    example = (torch.zeros(2, 6),)
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".pt":
            torch.jit.save(torch.jit.script(model), str(path))
        elif path.suffix == ".onnx":
            torch.onnx.export(model, example, str(path), input_names=["features"], output_names=["scores"],
                              dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False, verbose=False)
        else:
            torch.export.save(torch.export.export(model, example, dynamic_shapes={"x": {0: batch}}), str(path))
    return path


def new(name: str = "scorer-a", **changes) -> NewVariant:
    return NewVariant(**{"name": name, "family": "scorer", "accuracy": 0.87, "inputs": (FEATURES,), **changes})


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("suffix, backend", [(".pt", "torchscript"), (".onnx", "onnx"), (".pt2", "torch_export")])
def test_a_model_file_is_copied_in_with_a_manifest_the_controller_serves(tmp_path: Path, suffix: str,
                                                                         backend: str) -> None:
    model_file = export(scorer(), tmp_path / f"mine{suffix}")
    repo = tmp_path / "repo"

    variant = add_model(repo, model_file, new(), trial=trial_run)

    manifest = json.loads((repo / "scorer-a" / "manifest.json").read_text())
    artifact = repo / "scorer-a" / manifest["artifact"]
    assert artifact.read_bytes() == model_file.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest() == variant.sha256
    assert manifest["backend"] == backend and manifest["family"] == "scorer" and manifest["accuracy"] == 0.87
    assert manifest["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 6]}]
    assert manifest["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]  # from the forward pass
    served = scan_repository(repo)
    assert list(served.variants) == ["scorer-a"] and served.unavailable == {}
    assert served.variants["scorer-a"].info().platform == {"torchscript": "pytorch_torchscript", "onnx":
                                                           "onnxruntime_onnx", "torch_export": "pytorch_torch_export"}[backend]


def test_declared_outputs_are_checked_and_kept_by_name(tmp_path: Path) -> None:
    model_file = export(scorer(), tmp_path / "mine.pt")
    scores = parse_tensor("scores:FP32:-1,3")
    variant = add_model(tmp_path / "repo", model_file, new(outputs=(scores,)), trial=trial_run)
    assert variant.outputs == (scores,)


@pytest.mark.parametrize("changes, reason", [
    ({"inputs": (parse_tensor("features:FP32:-1,7"),)}, "mat1 and mat2 shapes cannot be multiplied"),
    ({"outputs": (parse_tensor("scores:FP32:-1,4"),)}, "output 'scores' has shape [1, 3]"),
    ({"outputs": (parse_tensor("scores:INT64:-1,3"),)}, "is FP32; declared INT64"),
    ({"outputs": (parse_tensor("a:FP32:-1,3"), parse_tensor("b:FP32:-1,3"))}, "returns 1 outputs; 2 are declared"),
    ({"accuracy": 1.5}, "must lie in [0, 1]"),
    ({"name": "../escape"}, "--name"),
    ({"backend": "tensorrt"}, "not one of"),
])
def test_a_model_that_does_not_run_as_declared_is_refused_and_changes_nothing(tmp_path: Path, changes: dict,
                                                                               reason: str) -> None:
    model_file = export(scorer(), tmp_path / "mine.pt")
    repo = tmp_path / "repo"
    add_model(repo, model_file, new("kept"), trial=trial_run)
    before = entries(repo)

    with pytest.raises(RepositoryError) as exc:
        add_model(repo, model_file, new(**changes), trial=trial_run)

    assert reason in str(exc.value)
    assert entries(repo) == before == ["kept"]  # no variant, and no half-written folder left behind


def test_a_model_whose_batch_dimension_is_fixed_is_refused(tmp_path: Path) -> None:
    model_file = export(FixedBatch().eval(), tmp_path / "fixed.pt")
    with pytest.raises(RepositoryError, match="does not run as declared"):
        add_model(tmp_path / "repo", model_file, new(), trial=trial_run)  # batch 1 runs, batch 2 does not
    assert entries(tmp_path / "repo") == []
    add_model(tmp_path / "repo", model_file, new(max_batch=1), trial=trial_run)  # served one at a time, it is fine


@pytest.mark.parametrize(("backend", "says"), [("onnx", "index: 0 Got: 2 Expected: 1"),  # ONNX Runtime's middle line
                                               ("openvino", "the model input (shape=[1,6])")])  # past OpenVINO's sources
def test_an_onnx_model_exported_for_one_row_is_refused_saying_which_dimension_and_what_to_do(tmp_path: Path, backend,
                                                                                             says) -> None:
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scorer(), (torch.zeros(1, 6),), str(path), input_names=["features"], output_names=["scores"],
                          dynamo=True, external_data=False, verbose=False)
    with pytest.raises(RepositoryError) as exc:
        add_model(tmp_path / "repo", path, new(backend=backend), trial=trial_run)
    assert says in str(exc.value) and "Exception from" not in str(exc.value)
    assert "batch, dimension is fixed at 1" in str(exc.value) and "--max-batch 1" in str(exc.value)
    assert add_model(tmp_path / "repo", path, new(max_batch=1, backend=backend), trial=trial_run).max_batch == 1


def test_a_name_already_in_the_repository_is_kept_unless_replaced(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = add_model(repo, export(scorer(), tmp_path / "one.pt"), new(), trial=trial_run)
    torch.manual_seed(99)
    other = export(Scorer().eval(), tmp_path / "two.pt")

    with pytest.raises(RepositoryError, match="already exists"):
        add_model(repo, other, new(), trial=trial_run)
    assert scan_repository(repo).variants["scorer-a"].sha256 == first.sha256

    replaced = add_model(repo, other, new(), trial=trial_run, replace=True)
    assert replaced.sha256 == hashlib.sha256(other.read_bytes()).hexdigest() != first.sha256
    assert scan_repository(repo).variants["scorer-a"].sha256 == replaced.sha256
    assert entries(repo) == ["scorer-a"]


def test_replacing_a_variant_declared_in_a_folder_of_another_name_replaces_it_there(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, export(scorer(), tmp_path / "one.pt"), new(), trial=trial_run)
    (repo / "scorer-a").rename(repo / "a-old")  # a hand-made repository names folders as it likes
    torch.manual_seed(99)
    other = export(Scorer().eval(), tmp_path / "two.pt")

    replaced = add_model(repo, other, new(), trial=trial_run, replace=True)

    served = scan_repository(repo)
    assert served.variants["scorer-a"].sha256 == replaced.sha256 and served.unavailable == {}
    assert entries(repo) == ["a-old"], "one variant of the name, where it was declared"


def test_a_folder_being_added_is_not_a_variant(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, export(scorer(), tmp_path / "one.pt"), new(), trial=trial_run)
    hidden = repo / ".scorer-a.adding-x"  # what a killed `repo add` could leave
    hidden.mkdir()
    (hidden / "manifest.json").write_text((repo / "scorer-a" / "manifest.json").read_text())
    (hidden / "model.pt").write_bytes((repo / "scorer-a" / "model.pt").read_bytes())
    served = scan_repository(repo)
    assert list(served.variants) == ["scorer-a"] and served.unavailable == {}


@pytest.mark.parametrize("text, reason", [
    ("image:FP32", "NAME:DATATYPE:SHAPE"), ("image:FLOAT:-1,3", "not one of"), ("image:FP32:-1,x", "integers"),
    ("image:FP32:4,3", "batch and must be -1"), ("image:FP32:-1,0", "positive sizes"),
])
def test_a_bad_tensor_declaration_names_the_problem(text: str, reason: str) -> None:
    with pytest.raises(RepositoryError, match=None) as exc:
        parse_tensor(text)
    assert reason in str(exc.value)


def test_a_variant_whose_tensors_differ_from_its_family_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_file = export(scorer(), tmp_path / "one.pt")
    add_model(repo, model_file, new(), trial=trial_run)
    renamed = TensorSpec(name="inputs", datatype="FP32", shape=(-1, 6))

    with pytest.raises(RepositoryError, match="inputs inputs:FP32:-1,6 differ from features:FP32:-1,6 of 'scorer-a'") as exc:
        add_model(repo, model_file, new("scorer-b", inputs=(renamed,)), trial=trial_run)
    assert "give --input features:FP32:-1,6 to use the family's names" in str(exc.value)  # only the name differs
    wider = TensorSpec(name="features", datatype="FP32", shape=(-1, 7))
    with pytest.raises(RepositoryError) as exc:
        add_model(repo, export(torch.nn.Linear(7, 3).eval(), tmp_path / "wide.pt"), new("scorer-b", inputs=(wider,)),
                  trial=trial_run)
    assert "differ from features:FP32:-1,6" in str(exc.value) and "give --input" not in str(exc.value)
    assert entries(repo) == ["scorer-a"]

    add_model(repo, model_file, new("scorer-b"), trial=trial_run)  # the same tensors: welcome
    add_model(repo, model_file, new("other-a", family="other", inputs=(renamed,)), trial=trial_run)
    # Replacing a family's only variant may change its tensors: no other variant holds the family to them.
    add_model(tmp_path / "solo", model_file, new(), trial=trial_run)
    add_model(tmp_path / "solo", model_file, new(inputs=(renamed,)), trial=trial_run, replace=True)
    assert scan_repository(repo).unavailable == {}
    assert sorted(scan_repository(repo).variants) == ["other-a", "scorer-a", "scorer-b"]


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_a_weights_file_is_refused_saying_how_to_save_a_program(tmp_path: Path, suffix: str) -> None:
    weights = tmp_path / f"weights{suffix}"
    torch.save(scorer().state_dict(), weights)
    with pytest.raises(RepositoryError, match="holds weights saved with torch.save, not a program"):
        add_model(tmp_path / "repo", weights, new(), trial=trial_run)
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").iterdir()) == []


@pytest.mark.parametrize(("change", "flag"), [({"max_batch": 100_000}, "--max-batch"),
                                              ({"default_slo_ms": float("inf")}, "--slo-ms")])
def test_an_out_of_range_flag_is_refused_by_name_before_the_trial_run(tmp_path: Path, change, flag) -> None:
    import dataclasses

    ran = []
    with pytest.raises(RepositoryError, match=flag):
        add_model(tmp_path / "repo", export(scorer(), tmp_path / "one.pt"), dataclasses.replace(new(), **change),
                  trial=lambda *args: ran.append(args))
    assert ran == []


class _DictOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"score": x.sum(dim=1, keepdim=True)}


def test_a_model_returning_a_dict_without_declared_outputs_is_told_to_declare_them(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="declare its outputs with --output"):
        add_model(tmp_path / "repo", export(_DictOut().eval(), tmp_path / "d.pt"), new(), trial=trial_run)


def test_an_onnx_file_added_for_openvino_in_bf16_is_served_so(tmp_path: Path) -> None:
    model_file = export(scorer(), tmp_path / "mine.onnx")
    repo = tmp_path / "repo"

    variant = add_model(repo, model_file, new(backend="openvino", precision="bf16"), trial=trial_run)

    manifest = json.loads((repo / "scorer-a" / "manifest.json").read_text())
    assert manifest["backend"] == "openvino" and manifest["precision"] == "bf16"
    assert manifest["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    assert (repo / "scorer-a" / "model.onnx").read_bytes() == model_file.read_bytes()
    assert variant.spec().precision == "bf16" and variant.info().platform == "openvino"


@pytest.mark.parametrize(("changes", "says"), [
    ({"precision": "bf16"}, "--precision bf16 is served by --backend openvino only, not onnx"),
    ({"backend": "openvino", "precision": "int4"}, "--precision 'int4' is not one of fp32, bf16"),
])
def test_a_precision_its_backend_cannot_serve_is_refused_before_the_trial_run(tmp_path: Path, changes, says) -> None:
    ran = []
    with pytest.raises(RepositoryError, match=says):
        add_model(tmp_path / "repo", export(scorer(), tmp_path / "one.onnx"), new(**changes),
                  trial=lambda *args: ran.append(args))
    assert ran == [] and entries(tmp_path / "repo") == []
