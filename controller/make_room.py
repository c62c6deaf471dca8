"""Which leaving workers a move stops before it starts the new ones: break-before-make where a
device's memory cannot hold both. Pure and synchronous.

A move starts the workers of the new layout beside those it retires and stops the latter only once
the former serve (``controller.reconciler``). On a device whose memory holds the new layout but not
the two side by side (an edge board, a container with a memory limit) that overlap is what the
kernel answers by killing processes: a worker the layout keeps as likely as one that leaves. There,
workers asked to stop before the move are waited for, and just enough of the leaving workers go
first (a superseded move's workers still starting among them): those whose variants a kept worker
still serves, then the largest, until the device's need fits its bound. The bound is the planner's
own (``replanner.memory_overcommitted``), with what each worker was seen to hold beyond its
variants' needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.placement import PlannedWorker
from controller.reconciler import Transition, as_desired
from controller.replanner import memory_overcommitted
from controller.repository import Variant, reservation
from protocol.types import DeviceInfo


def room_first(t: Transition, current: Sequence[PlannedWorker], agents: Mapping[str, Sequence[DeviceInfo]],
               variants: Mapping[str, Variant], worker_overhead: Mapping[str, int] | None = None,
               departing: Sequence[PlannedWorker] = ()) -> tuple[list[PlannedWorker], list[PlannedWorker]]:
    """(the workers of ``t.retire`` and ``t.discard``, planned as in ``current``, to stop before the
    new workers on their devices start; the ``departing`` workers, asked to stop before this move
    and still there, to wait for): both empty when every device holds its leaving, departing and
    new workers together."""
    by_id = {w.worker_id: w for w in current}
    staying = [as_desired(by_id[w]) for w in t.keep if w in by_id] + [as_desired(w) for w in t.new]
    leaving = [by_id[w] for w in (*t.retire, *t.discard) if w in by_id]
    kept_variants = {v for w in t.keep if w in by_id for v in by_id[w].variants}

    def over(*still: Sequence[PlannedWorker]) -> set[str]:
        return set(memory_overcommitted([*staying, *(as_desired(w) for ws in still for w in ws)], agents, variants,
                                        worker_overhead))

    first: list[PlannedWorker] = []
    waited: list[PlannedWorker] = []
    for agent_id, device_id in sorted({(w.agent_id, w.partition.device_id) for w in t.new}):
        name = f"{agent_id}/{device_id}"
        if name not in over(leaving, departing):
            continue
        # Stopping already: they go whatever is chosen here, and the new workers wait for them.
        waited += [w for w in departing if (w.agent_id, w.partition.device_id) == (agent_id, device_id)]
        here = sorted((w for w in leaving if (w.agent_id, w.partition.device_id) == (agent_id, device_id)),
                      key=lambda w: (not set(w.variants) <= kept_variants, -reservation(variants, w.variants),
                                     w.worker_id))
        for w in here:
            if name not in over(leaving):
                break
            leaving.remove(w)
            first.append(w)
    return first, waited
