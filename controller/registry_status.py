"""The registry as ``letmesh status`` shows it: agents, workers and models, each with its state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.types import AgentStatus, ModelStatus, WorkerState, WorkerStatus

if TYPE_CHECKING:
    from controller.registry import Registry, WorkerRecord

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
            memory_peak_bytes=w.memory_peak_bytes,
        )
        for w in sorted(reg.workers.values(), key=lambda w: w.plan.worker_id)
    )
    models = []
    for v in sorted(reg.variants.values(), key=lambda v: v.name):
        serving = tuple(
            w.plan.worker_id for w in reg.workers.values() if w.state == WorkerState.READY and v.name in w.plan.variants
        )
        placed = sorted((w for w in reg.workers.values()
                         if w.in_plan and w.state not in LEAVING and v.name in w.plan.variants),
                        key=lambda w: w.plan.worker_id)
        reason = "" if serving else (_not_serving(reg, placed, now) if placed
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



def _not_serving(reg: Registry, placed: list[WorkerRecord], now: float) -> str:
    """Why the workers a variant is placed on do not serve: their agent is lost, they crashed and
    are not restarted (past the restart limit, or they could load nothing), or they are starting."""
    lost = [w for w in placed if w.state == WorkerState.LOST or not reg.agent_alive(w.plan.agent_id, now)]
    crashed = [w for w in placed if w.state == WorkerState.CRASHED and w not in lost]
    starting = [w for w in placed if w not in lost and w not in crashed]
    parts = []
    if starting:
        parts.append(f"placed on {_ids(starting)}, not ready yet")
    if lost:
        agents = sorted({w.plan.agent_id for w in lost})
        parts.append(f"placed on {_ids(lost)}, whose agent{'s' if len(agents) > 1 else ''} "
                     f"{', '.join(agents)} {'are' if len(agents) > 1 else 'is'} lost")
    if crashed:
        parts.append(f"placed on {_ids(crashed)}, crashed, not to be restarted")
    return "; ".join(parts)


def _ids(workers: list[WorkerRecord]) -> str:
    return ", ".join(w.plan.worker_id for w in workers)
