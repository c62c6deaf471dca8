"""Fault scenarios on a ``NetMesh`` under steady load, measured the same way by the tests and the benchmark.

A scenario cuts one host's link for ``cut_s`` while an open-loop client sends requests to the
gateway, heals it, waits (bounded) for the mesh to come back, and reports: the requests sent,
answered and failed during the cut and after it; when the controller reported the host lost
(detect), when a worker of the variant was planned and ready on another agent (re-place), and
when the mesh was whole again after the heal (resume); and the worker processes the controller
does not know about (orphans). A ``StatusWatch`` thread polls ``letmesh status`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from protocol.message import StatusReply
from tests.multihost.load import IDENTITY_INPUT, OpenLoopLoad, Tally, first_steady_success, tally
from tests.multihost.mesh import NetMesh, alive_agents, serving_workers

VARIANT = "identity"
INFER_PATH = f"/v2/models/{VARIANT}/infer"


class StatusWatch:
    """Polls the controller's status every ``interval_s`` in a thread; keeps (time, status or None)."""

    def __init__(self, mesh: NetMesh, interval_s: float = 0.25) -> None:
        self.mesh = mesh
        self.interval_s = interval_s
        self.samples: list[tuple[float, StatusReply | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self.samples.append((t, self.mesh.status(timeout_s=1.0)))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t)))

    def first(self, predicate, after: float) -> float | None:
        """The time of the first sample at or after ``after`` that satisfies ``predicate``."""
        for t, status in list(self.samples):
            if t >= after and status is not None and predicate(status):
                return t
        return None

    def latest(self) -> StatusReply | None:
        for _, status in reversed(list(self.samples)):
            if status is not None:
                return status
        return None


@dataclass
class FaultReport:
    fault: str  # "agent" or "controller"
    host: str
    cut_s: float
    before: Tally
    during: Tally  # requests sent while the link was cut
    after: Tally  # requests sent after the heal
    detect_s: float | None = None  # cut -> the controller reports the host lost
    replace_planned_s: float | None = None  # cut -> a worker of the variant planned on another agent
    replace_s: float | None = None  # cut -> such a worker ready
    resume_s: float | None = None  # heal -> the mesh whole again (see the scenario)
    # heal -> requests succeed for good; negative: they did before the heal (a replacement served,
    # or, for the controller, they never stopped)
    serving_resumed_s: float | None = None
    orphans: list[tuple[str, int]] = field(default_factory=list)
    started_after_heal: list[str] = field(default_factory=list)  # workers the controller added after the heal
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> Tally:
        return _sum(self.before, self.during, self.after)

    def rows(self) -> list[str]:
        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"
        return [f"{self.fault} cut ({self.host}, {self.cut_s:.0f} s): before {self.before.line()}",
                f"  during {self.during.line()}", f"  after  {self.after.line()}",
                f"  detect {s(self.detect_s)} s, re-place planned {s(self.replace_planned_s)} s / ready "
                f"{s(self.replace_s)} s (from the cut); resume {s(self.resume_s)} s, serving for good "
                f"{s(self.serving_resumed_s)} s (from the heal); orphans {self.orphans or 'none'}; "
                f"workers started after the heal {self.started_after_heal or 'none'}",
                *(f"  note: {n}" for n in self.notes)]


def _sum(*tallies: Tally) -> Tally:
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    for t in tallies:
        for k, v in t.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        for e, n in t.errors.items():
            errors[e] = errors.get(e, 0) + n
    return Tally(sent=sum(t.sent for t in tallies), ok=sum(t.ok for t in tallies),
                 failed=sum(t.failed for t in tallies), unanswered=sum(t.unanswered for t in tallies),
                 statuses=statuses, crossed=sum(t.crossed for t in tallies),
                 missing_retry_after=sum(t.missing_retry_after for t in tallies), errors=errors)


def agent_hosts(mesh: NetMesh) -> list[str]:
    return [label.removeprefix("agent-") for label in mesh.roles if label.startswith("agent-")]


async def _to_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


async def settle(mesh: NetMesh, timeout_s: float, quiet_s: float = 3.0) -> StatusReply:
    """Wait until the layout holds still: every agent alive, the variant served, no worker
    starting or leaving, for ``quiet_s`` in a row (a re-plan in progress would blur a fault)."""
    deadline = time.monotonic() + timeout_s
    calm_since = None
    hosts = set(agent_hosts(mesh))
    while True:
        status = await _to_thread(mesh.status)
        calm = (status is not None and hosts <= alive_agents(status) and serving_workers(status, VARIANT)
                and all(w.state in ("ready", "stopped") for w in status.workers)
                and await _to_thread(probe, mesh) == 200)
        now = time.monotonic()
        if calm:
            calm_since = calm_since or now
            if now - calm_since >= quiet_s:
                return status
        else:
            calm_since = None
        if now > deadline:
            raise AssertionError(f"layout did not settle within {timeout_s:.0f} s; last status: {describe(status)}")
        await asyncio.sleep(0.25)


def probe(mesh: NetMesh) -> int:
    """The HTTP status of one request to the variant (0: no answer)."""
    body = json.dumps({"inputs": IDENTITY_INPUT}).encode()
    req = urllib.request.Request(mesh.http_url + INFER_PATH, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def serving_again(load: OpenLoopLoad, since: float, n: int = 10) -> bool:
    """The last ``n`` answered requests sent after ``since`` all succeeded."""
    done = [o for o in load.outcomes if o.sent_at >= since and o.done_at > 0]
    return len(done) >= n and all(o.status == 200 for o in done[-n:])


def resume_timeout(cut_s: float) -> float:
    """How long to wait for a mesh to come back: a silent cut leaves TCP retransmitting with a
    doubling back-off, so the next try after the heal can be about as far away as the cut was long."""
    return 30.0 + 1.5 * cut_s


def describe(status: StatusReply | None) -> str:
    if status is None:
        return "no answer"
    agents = ", ".join(f"{a.agent_id}{'' if a.alive else ' LOST'}" for a in status.agents)
    workers = ", ".join(f"{w.worker_id}={w.state}/{w.pid}" for w in status.workers)
    return f"agents [{agents}] workers [{workers}] gateways {list(status.gateways)}"


async def wait_orphans_gone(mesh: NetMesh, timeout_s: float) -> list[tuple[str, int]]:
    """Orphans until there are none or ``timeout_s`` passed (a stop in progress is not an orphan yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await _to_thread(mesh.status)
        orphans = mesh.orphans(status, agent_hosts(mesh)) if status is not None else [("?", -1)]
        if not orphans or time.monotonic() > deadline:
            return orphans
        await asyncio.sleep(0.5)


async def agent_cut(mesh: NetMesh, *, cut_s: float, rate_rps: float, warm_s: float = 3.0) -> FaultReport:
    """Cut the agent serving the variant (the first, if several) under steady load, then heal it.

    resume: the healed agent reported alive again and the variant served by a ready worker. The
    scenario ends once that holds and requests succeed again (or a bound passed), so what it
    leaves behind does not spill into the next one.
    """
    load = OpenLoopLoad(mesh.http_url + INFER_PATH, rate_rps, prefix="agentcut-")
    load.start()
    try:
        await asyncio.sleep(warm_s)
        status = await settle(mesh, timeout_s=60)
        victim = serving_workers(status, VARIANT)[0][0]
        others_before = {a for a, _, _ in serving_workers(status, VARIANT) if a != victim}
        with StatusWatch(mesh) as watch:
            t_cut = time.monotonic()
            mesh.lab.cut(victim)
            await asyncio.sleep(cut_s)
            t_heal = time.monotonic()
            mesh.lab.heal(victim)

            def whole(s: StatusReply) -> bool:
                return victim in alive_agents(s) and bool(serving_workers(s, VARIANT))

            deadline = time.monotonic() + resume_timeout(cut_s)
            while ((watch.first(whole, t_heal) is None or not serving_again(load, t_heal))
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.25)
            await asyncio.sleep(2.0)  # load keeps running on the mesh as it came back
        outcomes = await load.stop()
    except BaseException:
        await _abandon(load)
        raise

    def lost(s: StatusReply) -> bool:
        return victim not in alive_agents(s)

    def elsewhere(states: tuple[str, ...]):
        def check(s: StatusReply) -> bool:
            return any(w.agent_id not in (victim, *others_before) and w.agent_id in alive_agents(s)
                       and w.state in states and VARIANT in w.variants for w in s.workers)
        return check

    report = FaultReport(
        fault="agent", host=victim, cut_s=cut_s,
        before=tally(outcomes, until=t_cut), during=tally(outcomes, t_cut, t_heal), after=tally(outcomes, t_heal),
    )
    t_lost = watch.first(lost, t_cut)
    report.detect_s = _since(t_cut, t_lost)
    report.replace_planned_s = _since(t_cut, watch.first(elsewhere(("starting", "ready")), t_cut))
    report.replace_s = _since(t_cut, watch.first(elsewhere(("ready",)), t_cut))
    report.resume_s = _since(t_heal, watch.first(whole, t_heal))
    report.serving_resumed_s = _since(t_heal, first_steady_success(outcomes, t_cut))
    if others_before:
        report.notes.append(f"the variant was also served on {sorted(others_before)} before the cut")
    report.orphans = await wait_orphans_gone(mesh, timeout_s=15)
    return report


async def controller_cut(mesh: NetMesh, *, cut_s: float, rate_rps: float, warm_s: float = 2.0) -> FaultReport:
    """Cut the controller's host under steady load, then heal it.

    resume: the controller answers and reports every agent alive, the gateway registered, the
    model served, and no worker that was ready before the cut lost or restarted.
    """
    await settle(mesh, timeout_s=60)
    hosts = set(agent_hosts(mesh))
    load = OpenLoopLoad(mesh.http_url + INFER_PATH, rate_rps, prefix="ctlcut-")
    load.start()
    try:
        await asyncio.sleep(warm_s)
        with StatusWatch(mesh) as watch:
            await _first_sample(watch)
            t_cut = time.monotonic()
            before = watch.latest()
            mesh.lab.cut(mesh.controller_host)
            await asyncio.sleep(cut_s)
            t_heal = time.monotonic()
            mesh.lab.heal(mesh.controller_host)
            ready_before = {w.worker_id: w.pid for w in before.workers if w.state == "ready"}

            def whole(s: StatusReply) -> bool:
                """Every agent and the gateway back, the model served, and no worker that served
                before the cut lost or restarted (one a re-plan retired since may be gone)."""
                now = {w.worker_id: w for w in s.workers}
                kept = all(w not in now or now[w].state in ("draining", "stopping")
                           or (now[w].state == "ready" and now[w].pid == pid) for w, pid in ready_before.items())
                return (hosts <= alive_agents(s) and bool(s.gateways) and bool(serving_workers(s, VARIANT))
                        and kept)

            deadline = time.monotonic() + resume_timeout(cut_s)
            while ((watch.first(whole, t_heal) is None or not serving_again(load, t_heal))
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.25)
            await asyncio.sleep(2.0)
        outcomes = await load.stop()
    except BaseException:
        await _abandon(load)
        raise
    report = FaultReport(
        fault="controller", host=mesh.controller_host, cut_s=cut_s,
        before=tally(outcomes, until=t_cut), during=tally(outcomes, t_cut, t_heal), after=tally(outcomes, t_heal),
    )
    known = {w.worker_id for w in before.workers}
    report.started_after_heal = sorted({w.worker_id for t, st in watch.samples if t >= t_heal and st is not None
                                        for w in st.workers} - known)
    report.resume_s = _since(t_heal, watch.first(whole, t_heal))
    report.serving_resumed_s = _since(t_heal, first_steady_success(outcomes, t_load_start(outcomes)))
    if report.resume_s is None:
        report.notes.append(f"not whole again; last status: {describe(watch.latest())}")
    report.orphans = await wait_orphans_gone(mesh, timeout_s=15)
    return report


async def _first_sample(watch: StatusWatch, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while watch.latest() is None:
        if time.monotonic() > deadline:
            raise AssertionError("the controller does not answer status requests")
        await asyncio.sleep(0.05)


async def _abandon(load: OpenLoopLoad) -> None:
    with contextlib.suppress(Exception):
        await load.stop()


def t_load_start(outcomes) -> float:
    return outcomes[0].sent_at if outcomes else 0.0


def _since(t0: float, t: float | None) -> float | None:
    return None if t is None else round(t - t0, 2)
