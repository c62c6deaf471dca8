"""The gpu-let scheduling step shared by the worker, the simulator and the benchmarks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.batching import Queued, make_batcher
from mesh.scheduler import GpuletScheduler


def linear(per_item_s: float):
    return lambda n: per_item_s * n


def scheduler(**latency) -> GpuletScheduler[str]:
    return GpuletScheduler({name: make_batcher("edf", max_batch=4, latency_s=linear(s)) for name, s in latency.items()})


def test_an_empty_gpulet_is_idle():
    step = scheduler(a=0.01).step(now=0.0)
    assert step.idle and step.batch == () and step.late == () and step.key is None


def test_the_variant_whose_deadline_comes_first_runs_first():
    s = scheduler(a=0.01, b=0.01)
    s.push("a", Queued(1, deadline=1.0, arrived=0.0))
    s.push("b", Queued(2, deadline=0.5, arrived=0.0))
    step = s.step(now=0.0)
    assert step.key == "b" and [q.request_id for q in step.batch] == [2]


def test_hopeless_requests_are_answered_late_and_the_next_runnable_batch_still_runs():
    s = scheduler(a=0.1, b=0.01)
    s.push("a", Queued(1, deadline=0.05, arrived=0.0))  # cannot finish: 0.1 s alone
    s.push("b", Queued(2, deadline=0.5, arrived=0.0))
    step = s.step(now=0.0)
    assert [(k, q.request_id) for k, q in step.late] == [("a", 1)]
    assert step.key == "b" and [q.request_id for q in step.batch] == [2]
    assert len(s) == 0


def test_only_late_requests_leave_the_gpulet_idle():
    s = scheduler(a=0.1)
    s.push("a", Queued(1, deadline=0.05, arrived=0.0))
    step = s.step(now=0.0)
    assert len(step.late) == 1 and step.idle


def test_a_waiting_policy_says_when_to_step_again():
    s = GpuletScheduler({"a": make_batcher("proteus", max_batch=4, latency_s=linear(0.01))})
    s.push("a", Queued(1, deadline=1.0, arrived=0.0))
    step = s.step(now=0.0)
    assert step.batch == () and step.wake_at is not None and 0.0 < step.wake_at < 1.0


def test_a_full_queue_refuses_the_request():
    s = GpuletScheduler({"a": make_batcher("edf", max_batch=1, latency_s=linear(0.01), max_queue=1)})
    assert s.push("a", Queued(1, deadline=1.0, arrived=0.0))
    assert not s.push("a", Queued(2, deadline=1.0, arrived=0.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.0, 0.2)), max_size=30))
def test_every_request_leaves_exactly_once_as_a_batch_or_late(pushes):
    s = scheduler(a=0.01, b=0.03, c=0.05)
    for rid, (key, deadline) in enumerate(pushes):
        s.push(key, Queued(rid, deadline=deadline, arrived=0.0))
    seen: list[int] = []
    now = 0.0
    while True:
        step = s.step(now)
        seen += [q.request_id for _, q in step.late]
        if step.batch:
            seen += [q.request_id for q in step.batch]
            now += 0.01 * len(step.batch)
            s.finished(step.key, len(step.batch), False)
        elif step.wake_at is not None:
            now = step.wake_at
        else:
            break
    assert sorted(seen) == list(range(len(pushes)))
