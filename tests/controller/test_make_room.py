"""Break-before-make where a device's memory cannot hold the leaving and the new workers together:
which leaving workers go first (``controller.make_room``) and the move that waits for them to go
(``Transition.make_room``), driven by hand."""

from __future__ import annotations

from pathlib import Path

from controller.make_room import room_first
from controller.placement import PlannedWorker
from controller.reconciler import DesiredWorker, Phase, begin
from controller.repository import Variant
from protocol.types import DeviceInfo, Partition

MIB = 1 << 20
CORES = {("a1", "cpu0"): 4, ("a2", "cpu0"): 4}


def variant(name: str, mib: int) -> Variant:
    return Variant(name=name, family=name, version="1", backend="torchscript", accuracy=0.9, max_batch=8,
                   default_slo_ms=100.0, energy_j=0.0, inputs=(), outputs=(), artifact=Path("/nonexistent"),
                   sha256="0" * 64, size_bytes=1, profile_ms={}, memory_bytes=mib * MIB)


VARIANTS = {"cnn": variant("cnn", 200), "mlp": variant("mlp", 100), "bert": variant("bert", 300)}


def agents(a1_mib: int, a2_mib: int = 4096) -> dict[str, list[DeviceInfo]]:
    """Two hosts of four cores; the planner admits 90 % of each one's memory."""
    return {a: [DeviceInfo(device_id="cpu0", kind="cpu", name="cpu", cores=4, memory_bytes=mib * MIB)]
            for a, mib in (("a1", a1_mib), ("a2", a2_mib))}


def worker(worker_id: str, agent: str, cores: tuple[int, ...], *variants: str) -> PlannedWorker:
    return PlannedWorker(worker_id, agent, Partition(device_id="cpu0", kind="cpu", cores=cores), variants)


def want(agent: str, size: int, *variants: str) -> DesiredWorker:
    return DesiredWorker(agent, "cpu0", "cpu", size, variants)


# Serving: cnn and mlp apart on a1, bert on a2. The new layout: cnn and mlp in one worker of two
# cores on a1 (and bert as it is).
CURRENT = [worker("a1.w0", "a1", (0,), "cnn"), worker("a1.w1", "a1", (1,), "mlp"), worker("a2.w0", "a2", (0,), "bert")]
MERGED = [want("a1", 2, "cnn", "mlp"), want("a2", 1, "bert")]
OVERHEAD = {"cpu": 100 * MIB}  # what each worker holds beyond its variants' needs


def move(now: float = 0.0, *, start_timeout_s: float = 10.0):
    return begin(CURRENT, MERGED, CORES, generation=2, now=now, start_timeout_s=start_timeout_s, drain_s=2.0)


def test_a_device_that_holds_old_and_new_workers_together_moves_make_before_break() -> None:
    # a1 holds cnn + mlp twice over with four workers' overhead: 600 + 400 MiB of 90 % of 2 GiB.
    t = move()
    assert room_first(t, CURRENT, agents(2048), VARIANTS, OVERHEAD) == ([], [])


def test_just_enough_leaving_workers_go_first_the_largest_first() -> None:
    # a1 admits 0.9 x 900 = 810 MiB. New worker: 300 + 100; with both old ones (300 + 200) it is 900,
    # over; without the cnn worker (the larger) 600 fits: the mlp worker may stay till the switch.
    t = move()
    first, _ = room_first(t, CURRENT, agents(900), VARIANTS, OVERHEAD)
    assert [w.worker_id for w in first] == ["a1.w0"]
    # Tighter (0.9 x 600 = 540 MiB): the mlp worker too.
    first, _ = room_first(t, CURRENT, agents(600), VARIANTS, OVERHEAD)
    assert sorted(w.worker_id for w in first) == ["a1.w0", "a1.w1"]


def test_a_leaving_worker_whose_variants_a_kept_worker_serves_goes_first() -> None:
    # a1 serves mlp twice (w1, w2) and cnn; the new layout keeps one mlp worker and puts cnn with bert.
    current = [worker("a1.w0", "a1", (0,), "cnn"), worker("a1.w1", "a1", (1,), "mlp"),
               worker("a1.w2", "a1", (2,), "mlp")]
    t = begin(current, [want("a1", 1, "mlp"), want("a1", 2, "cnn", "bert")], CORES, generation=2, now=0.0)
    assert len(t.keep) == 1 and len(t.retire) == 2
    # Kept mlp 200 + new 600 = 800 MiB of 0.9 x 1300 = 1170: one leaving worker fits beside them, not
    # both. The mlp one goes, though smaller: the kept worker serves mlp, and cnn keeps its own till
    # the switch.
    (first,), _ = room_first(t, current, {"a1": agents(1300)["a1"]}, VARIANTS, OVERHEAD)
    assert first.variants == ("mlp",)


def test_only_devices_that_receive_new_workers_make_room() -> None:
    # a2 is short of memory for what it runs, but the move starts nothing there.
    t = move()
    assert room_first(t, CURRENT, agents(4096, a2_mib=100), VARIANTS, OVERHEAD) == ([], [])


def test_the_new_workers_start_once_the_leaving_ones_are_gone_with_their_own_start_timeout() -> None:
    t = move(start_timeout_s=10.0)
    t.make_room([CURRENT[0], CURRENT[1]])
    assert t.phase is Phase.MAKING_ROOM and t.held == ("a1.g2.w0",)
    serving = {"a1.w0", "a1.w1", "a2.w0"}
    first = t.step(serving, now=0.0, present={"a1.w0", "a1.w1"})
    assert first.start == () and first.drain == ("a1.w0", "a1.w1") and first.stop == ()
    assert t.routing({"a1.w0": {"cnn": 5.0}, "a2.w0": {"bert": 1.0}}) == {"a2.w0": {"bert": 1.0}}  # not routed to
    # Draining: for as long as the gateways take to stop sending (their variants may have no worker).
    assert t.step(serving, now=0.4, present={"a1.w0", "a1.w1"}) == type(first)()
    stop = t.step(serving, now=0.5, present={"a1.w0", "a1.w1"})
    assert stop.stop == ("a1.w0", "a1.w1") and stop.start == ()
    assert t.step({"a2.w0"}, now=9.0, present={"a1.w1"}).start == ()  # one of them has not exited yet
    room = t.step({"a2.w0"}, now=11.0, present=set())
    assert [w.worker_id for w in room.start] == ["a1.g2.w0"] and t.phase is Phase.STARTING
    # The start timeout counts from here, not from the move's beginning.
    assert t.step({"a2.w0"}, now=20.0).stop == () and t.phase is Phase.STARTING
    switch = t.step({"a2.w0", "a1.g2.w0"}, now=20.5)
    assert switch.drain == () and t.phase is Phase.DRAINING  # the room-first workers drained long ago
    assert t.step(set(), now=23.0).stop == () and t.phase is Phase.DONE


def test_new_workers_on_other_devices_start_at_once() -> None:
    current = [*CURRENT, worker("a2.w1", "a2", (1,), "mlp")]
    t = begin(current, [want("a1", 2, "cnn", "mlp"), want("a2", 2, "bert", "mlp")], CORES, generation=2, now=0.0)
    t.make_room([current[0], current[1]])
    first = t.step(set(), now=0.0, present={"a1.w0", "a1.w1"})
    assert [w.agent_id for w in first.start] == ["a2"]


def test_leaving_workers_that_do_not_go_abandon_the_move_and_every_new_worker_is_stopped() -> None:
    t = move(start_timeout_s=10.0)
    t.make_room([CURRENT[0]])
    t.step(set(), now=0.0, present={"a1.w0"})
    t.step(set(), now=2.0, present={"a1.w0"})
    assert t.step(set(), now=11.9, present={"a1.w0"}).stop == ()
    out = t.step(set(), now=12.1, present={"a1.w0"})
    assert t.phase is Phase.ABANDONED and out.stop == ("a1.g2.w0",)  # never started: its agent says stopped
    assert out.start == ()


def test_a_starting_worker_the_new_layout_drops_is_waited_for_on_a_device_short_of_memory() -> None:
    # A superseded move's worker, just started and not ready (a1.g2.w0: cnn + mlp), is not wanted by
    # the new plan, which splits the family again. Stopped at once, it still holds its memory until it
    # exits: on a1 (0.9 x 700 = 630 MiB) the two new workers (300 + 200) wait for it (400).
    starting = worker("a1.g2.w0", "a1", (0, 1), "cnn", "mlp")
    t = begin([starting], [want("a1", 1, "cnn"), want("a1", 1, "mlp")], CORES, generation=3, now=0.0, ready=set(),
              drain_s=2.0)
    assert t.discard == ("a1.g2.w0",) and len(t.new) == 2
    first, waited = room_first(t, [starting], agents(700), VARIANTS, OVERHEAD)
    assert [w.worker_id for w in first] == ["a1.g2.w0"] and waited == []
    t.make_room(first, waited)
    step = t.step(set(), now=0.0, present={"a1.g2.w0"})
    assert step.stop == ("a1.g2.w0",) and step.drain == () and step.start == ()  # it serves nothing: no drain
    assert t.step(set(), now=0.5, present=set()).start == t.new  # gone: no drain period to wait out


def test_workers_stopping_before_the_move_are_waited_for_where_memory_is_short() -> None:
    # A worker of an abandoned move (cnn, 300 MiB) was told to stop and has not exited: the new
    # worker on a1 (0.9 x 800 = 720 MiB, which holds the serving mlp worker and the new one, not
    # the stopping one too) starts once it has.
    stopping = worker("a1.g1.w9", "a1", (2,), "cnn")
    current = [worker("a1.w1", "a1", (1,), "mlp")]
    t = begin(current, [want("a1", 1, "mlp"), want("a1", 1, "cnn")], CORES, generation=3, now=0.0)
    first, waited = room_first(t, current, agents(800), VARIANTS, OVERHEAD, departing=[stopping])
    assert first == [] and waited == [stopping]
    t.make_room(first, waited)
    assert t.step({"a1.w1"}, now=0.0, present={"a1.g1.w9"}) == type(t.step({"a1.w1"}, now=0.1, present={"a1.g1.w9"}))()
    assert [w.worker_id for w in t.step({"a1.w1"}, now=0.5, present=set()).start] == ["a1.g3.w0"]
    # Where memory holds it too, nothing waits for it.
    assert room_first(t, current, agents(2048), VARIANTS, OVERHEAD, departing=[stopping]) == ([], [])
