"""``letmesh plan``: workload and device files, profile sources, the layout picture and the
devices-needed search, end to end through the command's own argument parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from controller.planning import Demand, GpuLet, InterferenceModel, LatencyModel, Plan, plan
from controller.store import StateStore
from letmesh.capacity import carried, devices_needed, layout_picture, run_plan
from letmesh.capacity_inputs import (
    CapacityError,
    DeviceGroup,
    ProfileSourceError,
    WorkloadFileError,
    fleet,
    load_devices,
    load_profiles,
    load_workload,
    parse_workload,
    read_profile_csv,
)
from letmesh.commands.planning import add_plan_arguments
from protocol.types import ColocationSample, ProfileSample

PARTITIONS = (20, 40, 50, 60, 80, 100)
BATCHES = (1, 2, 4, 8, 16, 32)


def latency_ms(variant: str, kind: str, partition: int, batch: int) -> float:
    """Synthetic profile: work grows with batch, shrinks with partition until the variant's knee."""
    if kind == "cpu":
        return (4.0 + 2.0 * batch) * 2 / partition
    base, per_item, knee = {"small": (2.0, 0.5, 40), "big": (6.0, 2.0, 100)}[variant]
    return (base + per_item * batch) * knee / min(partition, knee) * (1 + 0.1 * (100 - partition) / 100)


def write_profiles(path: Path, *, cpu: bool = False) -> Path:
    lines = ["variant,device_kind,partition,batch,p50_ms,p99_ms"]
    for v in ("small", "big"):
        for p in PARTITIONS:
            for b in BATCHES:
                ms = latency_ms(v, "cuda", p, b)
                lines.append(f"{v},cuda,{p},{b},{ms:.4f},{ms * 1.05:.4f}")
        if cpu:
            for c in (1, 2, 4):
                for b in BATCHES:
                    ms = latency_ms(v, "cpu", c, b)
                    lines.append(f"{v},cpu,{c},{b},{ms:.4f},{ms:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


WORKLOAD = """
[[models]]
variant = "small"
rate_rps = 900
slo_ms = 50
memory_mb = 100

[[models]]
variant = "big"
rate_rps = 400
slo_ms = 120
"""

DEVICES = """
[[devices]]
kind = "cuda"
count = 6
memory_gb = 16
"""


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "workload": write(tmp_path / "workload.toml", WORKLOAD),
        "devices": write(tmp_path / "devices.toml", DEVICES),
        "profiles": write_profiles(tmp_path / "profiles.csv", cpu=True),
    }


def namespace(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="letmesh plan")
    add_plan_arguments(parser)
    return parser.parse_args(argv)


# --- files ---------------------------------------------------------------------------------------


def test_workload_and_devices_files_parse(files: dict[str, Path]) -> None:
    workload = load_workload(files["workload"])
    assert [(d.variant, d.rate_rps, d.slo_ms, d.memory_bytes) for d in workload.demands] == [
        ("small", 900.0, 50.0, 100 * 2**20), ("big", 400.0, 120.0, 0)]
    assert workload.devices == ()
    (group,) = load_devices(files["devices"])
    assert group == DeviceGroup("gpu", "cuda", 6, 100, 16 * 2**30)
    slots = group.slots()
    assert [s.device_id for s in slots] == [f"gpu{i}" for i in range(6)]


def test_json_files_and_devices_inside_the_workload(tmp_path: Path) -> None:
    doc = {"models": [{"variant": "small", "rate_rps": 10, "slo_ms": 30}],
           "devices": [{"kind": "cpu", "count": 12, "capacity": 4}, {"kind": "cuda", "name": "h100-", "count": 2}]}
    workload = load_workload(write(tmp_path / "w.json", json.dumps(doc)))
    assert [(g.name, g.kind, g.count, g.capacity) for g in workload.devices] == [("cpu", "cpu", 12, 4), ("h100-", "cuda", 2, 100)]
    ids = [s.device_id for s in fleet(workload.devices)]
    assert ids[:2] == ["cpu00", "cpu01"] and ids[-1] == "h100-1"  # zero-padded, so ids sort in order
    bare = load_devices(write(tmp_path / "d.json", json.dumps([{"kind": "cuda", "count": 3}])))
    assert bare[0].count == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nvariant = "a"\nslo_ms = 10\n', "model 'a': `rate_rps` is missing"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 0\n', "`slo_ms` must be positive"),
        ('[[models]]\nvariant = "a"\nrate_rps = -1\nslo_ms = 5\n', "`rate_rps` must not be negative"),
        ('[[models]]\nvariant = "a"\nrate_rps = "lots"\nslo_ms = 5\n', "`rate_rps` must be a number"),
        ('[[models]]\nvariant = "a"\nrate = 5\nslo_ms = 5\n', "unknown key(s) rate"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\n[[models]]\nvariant = "a"\nrate_rps = 1\nslo_ms = 5\n',
         "model 'a' appears twice"),
        ('[[models]]\nrate_rps = 5\nslo_ms = 5\n', "models #1: `variant` must be a non-empty string"),
        ('title = "x"\n', "unknown top-level key(s) title"),
        ("models = []\n", "no models"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\nmemory_mb = 1\nmemory_gb = 1\n', "not several"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\n[[devices]]\nkind = "cpu"\ncount = 2\n',
         "devices #1: `capacity` is missing"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\n[[devices]]\nkind = "cuda"\ncapacity = 50\n', "must be 100"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\n[[devices]]\nkind = "cuda"\ncount = 1.5\n',
         "`count` must be an integer"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\n[[devices]]\nkind = "cuda"\n[[devices]]\nkind = "cuda"\n',
         "several device groups are named 'gpu'"),
        ('[[models]]\nvariant = "a"\nrate_rps = 5\nslo_ms = 5\n[[devices]]\nkind = "cuda"\n[[devices]]\nkind = "cuda"\nname = "gpu1"\n',
         "clashing device ids"),
        ("[[models]\n", "is not valid TOML"),
    ],
)
def test_bad_workload_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "w.toml", text)
    with pytest.raises(WorkloadFileError) as err:
        load_workload(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkloadFileError, match="cannot read .*nope.toml"):
        load_workload(tmp_path / "nope.toml")


# --- profile sources -----------------------------------------------------------------------------


def test_profiles_must_be_named_explicitly(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProfileSourceError) as err:
        load_profiles()
    assert "--profiles" in str(err.value) and "--state-dir" in str(err.value)
    with pytest.raises(ProfileSourceError, match="not both"):
        load_profiles(profiles_csv=files["profiles"], state_dir=tmp_path)
    with pytest.raises(ProfileSourceError, match="no controller store"):
        load_profiles(state_dir=tmp_path / "empty")
    with pytest.raises(ProfileSourceError, match="needs at least 6 co-location samples"):
        load_profiles(profiles_csv=files["profiles"], interference="fit")


def test_profile_csv_errors_point_at_the_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "p.csv", "variant,device_kind,partition,batch,p50_ms\nsmall,cuda,100,1,2.0\nsmall,cuda,100,two,2.0\n")
    with pytest.raises(ProfileSourceError, match=r"p.csv:3: bad profile row"):
        read_profile_csv(bad)
    missing = write(tmp_path / "q.csv", "variant,partition,batch,p50_ms\n")
    with pytest.raises(ProfileSourceError, match="missing device_kind"):
        read_profile_csv(missing)
    # p99_ms is optional: it defaults to p50
    ok = write(tmp_path / "r.csv", "variant,device_kind,partition,batch,p50_ms\nsmall,cuda,100,1,2.5\n")
    assert read_profile_csv(ok)[0].p99_ms == 2.5


def test_state_dir_reads_the_controllers_measured_profiles_and_fits_interference(tmp_path: Path) -> None:
    samples = [ProfileSample(variant=v, device_kind="cuda", partition=p, batch=b, p50_ms=latency_ms(v, "cuda", p, b),
                             p99_ms=latency_ms(v, "cuda", p, b) * 1.1, runs=5)
               for v in ("small", "big") for p in PARTITIONS for b in BATCHES]
    colocations = [ColocationSample(device_kind="cuda", variant=v, partition=p, batch=b, other=o, other_partition=100 - p,
                                    other_batch=b, solo_p50_ms=10.0, shared_p50_ms=10.0 * (1.05 + 0.002 * p + 0.01 * (o == "big")))
                   for v in ("small", "big") for o in ("small", "big") for p in (40, 50, 60) for b in (1, 8)]
    store = StateStore(tmp_path / "controller.sqlite3")
    store.save_profiles(samples, colocations, now=1.0)
    store.close()
    profiles = load_profiles(state_dir=tmp_path)
    assert profiles.latency.has("small", "cuda")
    assert profiles.latency.latency_ms("small", "cuda", 100, 1) == pytest.approx(latency_ms("small", "cuda", 100, 1) * 1.1 * 1.1)
    assert profiles.interference.enabled
    assert "24 co-location samples" in profiles.description
    assert not load_profiles(state_dir=tmp_path, interference="off").interference.enabled


# --- the picture ---------------------------------------------------------------------------------


def test_picture_shows_every_device_and_gpulet(files: dict[str, Path]) -> None:
    profiles = load_profiles(profiles_csv=files["profiles"])
    devices = fleet(load_devices(files["devices"]))
    demands = load_workload(files["workload"]).demands
    result = plan(devices, list(demands), profiles.latency, interference=profiles.interference)
    picture = layout_picture(result, devices, width=50, group=False)
    lines = picture.splitlines()
    assert len(lines) == len(devices)
    for d, line in zip(devices, lines, strict=True):
        assert line.startswith(d.device_id + " ")
        bar = line[line.index("|"): line.rindex("|") + 1]
        assert len(bar) == 50 + 1 + sum(1 for g in result.gpulets if g.device_id == d.device_id) + (
            1 if sum(g.size for g in result.gpulets if g.device_id == d.device_id) < 100 else 0)
    for g in result.gpulets:
        line = next(line for line in lines if line.startswith(g.device_id + " "))
        for a in g.assignments:
            assert f"{a.variant} b{a.batch}" in line
        assert f"{g.size}%" in line
    unused = {d.device_id for d in devices} - {g.device_id for g in result.gpulets}
    for device_id in unused:
        assert next(line for line in lines if line.startswith(device_id + " ")).endswith("idle")


def test_picture_groups_identical_devices_into_ranges() -> None:
    devices = fleet([DeviceGroup("gpu", "cuda", 100, 100)])
    lets = [GpuLet(f"gpu{i:02d}", "cuda", 60, (_assign("small", 8),), 10.0, 1.0) for i in range(42)]
    lets += [GpuLet(f"gpu{i:02d}", "cuda", 40, (_assign("big", 4),), 10.0, 1.0) for i in range(42)]
    lets += [GpuLet("gpu50", "cuda", 100, (_assign("big", 16), _assign("small", 2)), 10.0, 1.0)]
    picture = layout_picture(Plan(tuple(lets)), devices)
    lines = picture.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("gpu00-gpu41 ×42") and "small b8 60%" in lines[0] and "big b4 40%" in lines[0]
    assert lines[1].startswith("gpu42-gpu49,gpu51-gpu99 ×57") and lines[1].endswith("idle")
    assert lines[2].startswith("gpu50 ") and "big b16+small b2 100%" in lines[2]


def _assign(variant: str, batch: int):
    from controller.planning import Assignment

    return Assignment(variant, batch, 10.0, 1.0)


# --- devices needed ------------------------------------------------------------------------------


def _planner(latency: LatencyModel):
    return lambda devices, demands: plan(devices, demands, latency, interference=InterferenceModel.none())


def test_devices_needed_is_the_smallest_count_that_carries_everything(files: dict[str, Path]) -> None:
    latency = load_profiles(profiles_csv=files["profiles"]).latency
    demands = list(load_workload(files["workload"]).demands)
    group = DeviceGroup("gpu", "cuda", 12, 100)
    needed = devices_needed([group], demands, _planner(latency), latency)
    n = needed.counts["gpu"]
    assert 1 < n < 12 and not needed.impossible
    assert carried(_planner(latency)(group.slots(n), demands), demands)
    assert not carried(_planner(latency)(group.slots(n - 1), demands), demands)
    # a fleet smaller than needed: the search grows past it to the same answer
    small = devices_needed([DeviceGroup("gpu", "cuda", 1, 100)], demands, _planner(latency), latency)
    assert small.counts == {"gpu": n}


def test_devices_needed_over_several_groups_is_minimal_in_every_group(files: dict[str, Path]) -> None:
    latency = load_profiles(profiles_csv=files["profiles"]).latency
    demands = [Demand("small", 8000.0, 50.0), Demand("big", 2500.0, 120.0)]
    groups = [DeviceGroup("gpu", "cuda", 8, 100), DeviceGroup("cpu", "cpu", 8, 4)]
    needed = devices_needed(groups, demands, _planner(latency), latency)
    counts = [needed.counts[g.name] for g in groups]
    assert all(n > 1 for n in counts), counts
    assert carried(_planner(latency)(fleet(groups, counts), demands), demands)
    for i in range(len(groups)):
        if counts[i]:
            fewer = counts[:i] + [counts[i] - 1] + counts[i + 1:]
            assert not carried(_planner(latency)(fleet(groups, fewer), demands), demands)


def test_a_variant_no_device_can_serve_is_reported_not_searched_for(files: dict[str, Path]) -> None:
    latency = load_profiles(profiles_csv=files["profiles"]).latency
    demands = [Demand("small", 100.0, 50.0), Demand("big", 50.0, 5.0), Demand("ghost", 5.0, 50.0)]
    needed = devices_needed([DeviceGroup("gpu", "cuda", 4, 100)], demands, _planner(latency), latency)
    assert set(needed.impossible) == {"big", "ghost"}
    assert "no profile" in needed.impossible["ghost"] and "5 ms SLO" in needed.impossible["big"]
    assert needed.counts == {"gpu": 1}


# --- the command ---------------------------------------------------------------------------------


def test_plan_command_prints_layout_summary_and_devices_needed(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "plan.json"
    args = namespace(["--workload", str(files["workload"]), "--devices", str(files["devices"]),
                      "--profiles", str(files["profiles"]), "--expand", "--json", str(out_json), "--compare-policies"])
    assert run_plan(args) == 0
    text = capsys.readouterr().out
    for i in range(6):
        assert f"gpu{i} " in text
    assert "all demand carried: 1,300.0 rps, planned as 1,560.0 rps" in text
    doc = json.loads(out_json.read_text())
    needed = doc["devices_needed"]["total"]
    assert f"devices needed (gpulet): {needed}  [gpu (cuda) {needed}]" in text
    assert set(doc["devices_needed_by_policy"]) == {"gpulet", "temporal", "whole"}
    assert doc["planned"] == {"small": pytest.approx(1080.0), "big": pytest.approx(480.0)}
    assert sum(a["rate_rps"] for g in doc["gpulets"] for a in g["assignments"] if a["variant"] == "big") == pytest.approx(480.0)


def test_plan_command_reports_unserved_demand_and_exits_1(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    one = write(tmp_path / "one.toml", '[[devices]]\nkind = "cuda"\ncount = 1\n')
    args = namespace(["--workload", str(files["workload"]), "--devices", str(one), "--profiles", str(files["profiles"]),
                      "--headroom", "none"])
    assert run_plan(args) == 1
    text = capsys.readouterr().out
    assert "UNSERVED:" in text
    assert "more than you have" in text


def test_plan_command_with_nothing_servable_says_so_instead_of_zero_devices(files: dict[str, Path], tmp_path: Path,
                                                                            capsys) -> None:
    # "ghost" has no profile; "big" cannot meet 5 ms even alone on a whole device.
    nothing = write(tmp_path / "nothing.toml", '[[models]]\nvariant = "ghost"\nrate_rps = 5\nslo_ms = 50\n\n'
                                               '[[models]]\nvariant = "big"\nrate_rps = 50\nslo_ms = 5\n')
    args = namespace(["--workload", str(nothing), "--devices", str(files["devices"]), "--profiles", str(files["profiles"]),
                      "--compare-policies"])
    assert run_plan(args) == 1  # demand is unserved
    text = capsys.readouterr().out
    assert "cannot serve ghost on any number of these devices: no profile" in text
    assert "devices needed (gpulet): no number of these devices (cuda) serves any variant with demand" in text
    assert "0 devices" not in text and "fewer than you have" not in text
    assert "  temporal  nothing servable" in text

    idle = write(tmp_path / "idle.toml", '[[models]]\nvariant = "small"\nrate_rps = 0\nslo_ms = 50\n')
    assert run_plan(namespace(["--workload", str(idle), "--devices", str(files["devices"]),
                               "--profiles", str(files["profiles"])])) == 0
    text = capsys.readouterr().out
    assert "devices needed (gpulet): none, the workload has no demand" in text and "fewer than you have" not in text


def test_plan_command_errors_are_clear_and_exit_2(files: dict[str, Path], capsys) -> None:
    assert run_plan(namespace(["--workload", str(files["workload"]), "--devices", str(files["devices"])])) == 2
    err = capsys.readouterr().err
    assert err.startswith("letmesh plan:") and "--profiles" in err and "--state-dir" in err
    assert run_plan(namespace(["--workload", str(files["workload"]), "--profiles", str(files["profiles"])])) == 2
    assert "no devices: pass --devices FILE or add [[devices]]" in capsys.readouterr().err
    assert run_plan(namespace(["--workload", str(files["workload"]), "--devices", str(files["devices"]),
                               "--profiles", str(files["profiles"]), "--headroom", "0.5"])) == 2
    assert "--headroom" in capsys.readouterr().err


def test_workload_parse_accepts_a_plain_mapping() -> None:
    workload = parse_workload({"models": [{"variant": "a", "rate_rps": 1, "slo_ms": 2}]})
    assert workload.demands == (Demand("a", 1.0, 2.0),)
    with pytest.raises(CapacityError):
        parse_workload([1, 2])
