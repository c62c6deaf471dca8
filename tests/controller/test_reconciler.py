"""Make-before-break transitions between layouts, driven by hand."""

from __future__ import annotations

from controller.placement import PlannedWorker
from controller.reconciler import DesiredWorker, Phase, begin
from protocol.types import Partition

CORES = {("a1", "cpu0"): 2}


def worker(worker_id: str, cores: tuple[int, ...], *variants: str) -> PlannedWorker:
    return PlannedWorker(worker_id, "a1", Partition(device_id="cpu0", kind="cpu", cores=cores), variants)


def want(size: int, *variants: str, batches=()) -> DesiredWorker:
    return DesiredWorker("a1", "cpu0", "cpu", size, variants, batches)


CURRENT = [worker("a1.w0", (0,), "cnn"), worker("a1.w1", (1,), "linear", "mlp")]


def test_the_same_layout_needs_no_transition() -> None:
    assert begin(CURRENT, [want(1, "cnn"), want(1, "mlp", "linear")], CORES, generation=2, now=0.0) is None


def test_new_workers_start_first_then_old_ones_drain_then_stop() -> None:
    t = begin(CURRENT, [want(1, "cnn"), want(1, "linear"), want(1, "mlp")], CORES, generation=2, now=0.0,
              drain_s=2.0)
    assert t.keep == ("a1.w0",) and t.retire == ("a1.w1",)
    assert [w.worker_id for w in t.new] == ["a1.g2.w0", "a1.g2.w1"]
    assert sorted(v for w in t.new for v in w.variants) == ["linear", "mlp"]

    first = t.step(ready={"a1.w0", "a1.w1"}, now=0.1)
    assert [w.worker_id for w in first.start] == ["a1.g2.w0", "a1.g2.w1"]
    assert first.drain == () and first.stop == ()  # nothing leaves before its successors serve
    assert t.step(ready={"a1.w0", "a1.w1", "a1.g2.w0"}, now=1.0).start == ()  # each command once
    switch = t.step(ready={"a1.w0", "a1.w1", "a1.g2.w0", "a1.g2.w1"}, now=2.0)
    assert switch.drain == ("a1.w1",) and switch.stop == ()
    assert t.step(ready=set(), now=3.0).stop == ()  # still draining
    done = t.step(ready=set(), now=4.0)
    assert done.stop == ("a1.w1",) and t.phase is Phase.DONE and t.finished


def test_a_new_worker_that_never_comes_up_abandons_the_move() -> None:
    t = begin(CURRENT, [want(2, "cnn", "linear", "mlp")], CORES, generation=3, now=0.0, start_timeout_s=5.0)
    t.step(ready=set(CURRENT_IDS := {"a1.w0", "a1.w1"}), now=0.0)
    out = t.step(ready=CURRENT_IDS, now=6.0)
    assert t.phase is Phase.ABANDONED
    assert out.stop == ("a1.g3.w0",) and out.drain == ()  # the old layout keeps serving


def test_new_partitions_avoid_cores_of_workers_that_stay() -> None:
    t = begin(CURRENT, [want(1, "cnn"), want(1, "linear", "mlp", batches=(("mlp", 8),))], CORES,
              generation=4, now=0.0)
    assert t is None  # same shapes: kept as they are
    t = begin(CURRENT, [want(1, "cnn"), want(1, "linear")], CORES, generation=4, now=0.0)
    (new,) = t.new
    assert new.partition.cores == (1,)  # core 0 stays with the cnn worker; core 1 is being freed
    t = begin(CURRENT, [want(2, "cnn", "linear", "mlp")], CORES, generation=5, now=0.0)
    (new,) = t.new
    assert new.partition.cores == (0, 1) and sorted(t.retire) == ["a1.w0", "a1.w1"]


def test_a_move_begun_while_workers_still_start_waits_for_kept_ones_and_stops_unwanted_ones_at_once() -> None:
    # a1.w0 serves; a1.g2.w0 (cnn) and a1.g2.w1 (mlp) were started by a move that demand overtook
    running = [worker("a1.w0", (0,), "linear"), worker("a1.g2.w0", (1,), "cnn"), worker("a1.g2.w1", (1,), "mlp")]
    t = begin(running, [want(1, "linear"), want(1, "cnn")], CORES, generation=3, now=0.0, ready={"a1.w0"})
    assert t.new == () and t.keep == ("a1.g2.w0", "a1.w0")
    assert t.awaiting == ("a1.g2.w0",) and t.discard == ("a1.g2.w1",) and t.retire == ()
    first = t.step(ready={"a1.w0"}, now=0.1)
    assert first.stop == ("a1.g2.w1",) and first.drain == ()  # it never served: no drain needed
    assert t.phase is Phase.STARTING  # the kept cnn worker is not up yet
    assert t.step(ready={"a1.w0"}, now=0.5).stop == ()  # each command once
    t.step(ready={"a1.w0", "a1.g2.w0"}, now=1.0)
    assert t.phase is Phase.DRAINING


def test_a_kept_worker_that_never_comes_up_is_stopped_with_the_abandoned_move() -> None:
    running = [worker("a1.w0", (0,), "linear"), worker("a1.g2.w0", (1,), "cnn")]
    t = begin(running, [want(1, "linear"), want(1, "cnn"), want(1, "mlp")], {("a1", "cpu0"): 3}, generation=3,
              now=0.0, ready={"a1.w0"}, start_timeout_s=5.0)
    t.step(ready={"a1.w0"}, now=0.0)
    out = t.step(ready={"a1.w0", "a1.g3.w0"}, now=6.0)
    assert t.phase is Phase.ABANDONED
    assert out.stop == ("a1.g3.w0", "a1.g2.w0")  # the serving linear worker stays


def test_a_move_superseded_while_it_starts_never_keeps_two_workers_on_the_same_cores() -> None:
    cores = {("ag", "cpu0"): 4}
    serving = PlannedWorker("ag.g1.w0", "ag", Partition(device_id="cpu0", kind="cpu", cores=(0, 1)), ("a",))
    # The next layout wants b and c: one of them starts on the cores `serving` gives up once it drains.
    second = begin([serving], [DesiredWorker("ag", "cpu0", "cpu", 2, ("b",)), DesiredWorker("ag", "cpu0", "cpu", 2, ("c",))],
                   cores, generation=2, now=0.0)
    assert second is not None
    on_its_cores = next(w for w in second.new if set(w.partition.cores) & {0, 1})
    # Demand moves before they are up: the layout now wants a and that worker's variant again.
    current = [serving, *second.new]
    third = begin(current, [DesiredWorker("ag", "cpu0", "cpu", 2, ("a",)),
                            DesiredWorker("ag", "cpu0", "cpu", 2, on_its_cores.variants)],
                  cores, generation=3, now=1.0, ready={serving.worker_id})
    assert third is not None
    running = [w for w in current if w.worker_id in third.keep] + list(third.new)
    held = [c for w in running for c in w.partition.cores]
    assert len(held) == len(set(held)) == 4, [(w.worker_id, w.partition.cores) for w in running]
    assert on_its_cores.worker_id in third.discard  # still starting, not wanted on those cores: stopped


def test_a_worker_capped_below_the_batches_the_new_plan_needs_is_replaced_not_kept() -> None:
    capped = [PlannedWorker("a1.w0", "a1", Partition(device_id="cpu0", kind="cpu", cores=(0,)), ("cnn",), (("cnn", 2),)),
              worker("a1.w1", (1,), "linear", "mlp")]
    for smaller in (1, 2):  # a fall: smaller batches than it runs
        assert begin(capped, [want(1, "cnn", batches=(("cnn", smaller),)), want(1, "linear", "mlp")], CORES,
                     generation=6, now=0.0) is None
    # A rise: the plan carries its rate with batches of 4, which this worker was started never to run.
    t = begin(capped, [want(1, "cnn", batches=(("cnn", 4),)), want(1, "linear", "mlp")], CORES, generation=6, now=0.0)
    assert t.keep == ("a1.w1",) and t.retire == ("a1.w0",)
    (new,) = t.new
    assert new.variants == ("cnn",) and new.batches == (("cnn", 4),)


def test_a_worker_whose_cap_covers_what_the_plan_needs_is_kept_whatever_cap_a_new_one_would_get() -> None:
    # The plan needs batches of 3; a worker started now would be allowed 22 (the SLO's bound at a
    # lower slowdown). The running one, allowed 11, carries the plan: kept, not restarted for 22.
    running = [PlannedWorker("a1.w0", "a1", Partition(device_id="cpu0", kind="cpu", cores=(0,)), ("cnn",), (("cnn", 11),)),
               worker("a1.w1", (1,), "linear", "mlp")]
    desired = [DesiredWorker("a1", "cpu0", "cpu", 1, ("cnn",), (("cnn", 22),), need=(("cnn", 3),)), want(1, "linear", "mlp")]
    assert begin(running, desired, CORES, generation=7, now=0.0) is None
    short = [DesiredWorker("a1", "cpu0", "cpu", 1, ("cnn",), (("cnn", 22),), need=(("cnn", 12),)), want(1, "linear", "mlp")]
    t = begin(running, short, CORES, generation=7, now=0.0)
    assert t.retire == ("a1.w0",) and t.new[0].batches == (("cnn", 22),)


def test_replicas_of_one_shape_go_to_the_gpulets_whose_batches_they_run() -> None:
    # Two replicas, one allowed batches of 8 and one of 2; the plan wants one needing 2 and one
    # needing 6. First come, first served gave the roomy worker to the small need and restarted
    # the other; both fit when the larger need chooses first.
    cores = {("a1", "cpu0"): 4}
    roomy = PlannedWorker("a1.w0", "a1", Partition(device_id="cpu0", kind="cpu", cores=(0, 1)), ("mid", "small"),
                          (("mid", 8), ("small", 8)))
    tight = PlannedWorker("a1.w1", "a1", Partition(device_id="cpu0", kind="cpu", cores=(2, 3)), ("mid", "small"),
                          (("mid", 2), ("small", 2)))
    desired = [want(2, "mid", "small", batches=(("mid", 2), ("small", 2))),
               want(2, "mid", "small", batches=(("mid", 6), ("small", 6)))]
    assert begin([roomy, tight], desired, cores, generation=8, now=0.0) is None
