"""The registry as ``letmesh status`` shows it: agents, workers and models, each with its state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.types import AgentStatus, ModelStatus, WorkerState, WorkerStatus

if TYPE_CHECKING:
    from controller.registry import Registry

# States of a worker that a new layout retires: it answers what it holds but takes nothing new.
LEAVING = frozenset({WorkerState.DRAINING, WorkerState.STOPPING})

StatusView = tuple[tuple[AgentStatus, ...], tuple[WorkerStatus, ...], tuple[ModelStatus, ...]]


def status_view(reg: Registry, now: float, forget_after_s: float | None = None) -> StatusView:
    """Agents, workers and models as ``letmesh status`` shows them; a lost agent with the time left
    before it is forgotten, a model that serves nowhere with the reason."""
    agents = tuple(
        AgentStatus(
            agent_id=a.agent_id,
            hostname=a.hostname,
            alive=reg.agent_alive(a.agent_id, now),
            devices=a.devices,
            last_seen_s=max(0.0, now - (reg.liveness.last_seen(f"agent:{a.agent_id}") or now)),
            forget_in_s=0.0 if a.lost_at is None or forget_after_s is None
            else max(0.0, a.lost_at + forget_after_s - now),
            joins=a.joins,
        )
        for a in sorted(reg.agents.values(), key=lambda a: a.agent_id)
    )
    workers = tuple(
        WorkerStatus(
            worker_id=w.plan.worker_id,
            agent_id=w.plan.agent_id,
            state=w.state,
            partition=w.plan.partition,
            variants=w.plan.variants,
            pid=w.pid,
            restarts=w.restarts,
            slowdown=dict(w.slowdown),
            runtimes=dict(w.runtimes),
        )
        for w in sorted(reg.workers.values(), key=lambda w: w.plan.worker_id)
    )
    models = []
    for v in sorted(reg.variants.values(), key=lambda v: v.name):
        serving = tuple(
            w.plan.worker_id for w in reg.workers.values() if w.state == WorkerState.READY and v.name in w.plan.variants
        )
        placed = sorted(w.plan.worker_id for w in reg.workers.values()
                        if w.in_plan and w.state not in LEAVING and v.name in w.plan.variants)
        reason = "" if serving else (f"placed on {', '.join(placed)}, not ready yet" if placed
                                     else "not placed: the current plan runs it on no worker")
        models.append(
            ModelStatus(
                name=v.name,
                family=v.family,
                accuracy=v.accuracy,
                state="READY" if serving else "UNAVAILABLE",
                workers=serving,
                reason=reason,
                placed=bool(serving or placed),
            )
        )
    return agents, workers, tuple(models)
