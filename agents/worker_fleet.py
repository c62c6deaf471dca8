"""The worker processes one agent runs: started as the controller asks, replaced when asked again
under the same id with another partition, restarted under an intensity limit when they exit on
their own (not when they could load nothing: see :class:`WorkerExit`), and stopped (they drain
first) off the agent's mailbox.

Each launch gets a generation unique in the agent, so the exit of a process that a same-named
worker replaced is never taken for the new one's. What the controller must hear goes out through
``send``; local events (an exit, a stop finished) come back through ``tell`` to the agent's mailbox,
which hands them to :meth:`WorkerFleet.exited` and :meth:`WorkerFleet.gone`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from agents.config import AgentConfig
from agents.managed_worker import ManagedWorker, WorkerExit, WorkerExited, WorkerGone
from agents.process import spawn_worker, stop_process
from mesh import cpu_policy
from mesh.clock import Clock
from mesh.keys import ClientKeys, drop_worker_credential, new_worker_credential
from mesh.supervisor import RestartIntensity
from protocol.message import StartWorker, WorkerCrashed, WorkerStarted, WorkerStopped
from protocol.types import RunningWorker

log = logging.getLogger("agents.agent_actor")  # the agent's log: one name for what it says


class WorkerFleet:
    """Not thread-safe: the agent actor's task owns it."""

    def __init__(self, config: AgentConfig, clock: Clock, *, send: Callable[[object], Awaitable[None]],
                 tell: Callable[[object], None],
                 background: Callable[[Coroutine[Any, Any, None], str], asyncio.Task]) -> None:
        self.config = config
        self._clock = clock
        self._send = send
        self._tell = tell
        self._background = background
        self.workers: dict[str, ManagedWorker] = {}
        self.cores: list[int] = []  # the agent's usable cores, once probed
        self.keys: ClientKeys | None = None  # the mesh's keys, on a mesh with keys
        self._launches = 0  # worker processes started: each launch's generation
        self.crashes = 0
        self.restarts = 0

    def pids(self) -> dict[str, int]:
        """worker id -> pid of the running process (0 when not running)."""
        return {wid: (w.proc.pid if w.proc and w.proc.returncode is None else 0) for wid, w in self.workers.items()}

    def running(self) -> tuple[RunningWorker, ...]:
        """The workers this agent runs (not those it is stopping), as a registration reports them."""
        return tuple(
            RunningWorker(worker_id=wid, variants=tuple(v.name for v in w.cmd.variants),
                          pid=w.proc.pid if w.proc is not None and w.proc.returncode is None else 0,
                          public_key=w.public_key, artifacts=tuple(v.sha256 for v in w.cmd.variants),
                          served_as=tuple(v.served_as for v in w.cmd.variants))
            for wid, w in sorted(self.workers.items()) if not w.stopping
        )

    def serving_on(self) -> tuple[frozenset[int], frozenset[str]]:
        """(cores, GPU device ids) the workers hold now."""
        parts = [w.cmd.partition for w in self.workers.values() if not w.stopping]
        cores = frozenset(self.cores[i] for p in parts if p.kind != "cuda" for i in p.cores if 0 <= i < len(self.cores))
        return cores, frozenset(p.device_id for p in parts if p.kind == "cuda")

    async def start(self, cmd: StartWorker) -> None:
        existing = self.workers.get(cmd.worker_id)
        # Gateways and the controller address may differ between re-sends; the worker learns
        # gateway changes on its own link, so only partition and variants make it a new worker.
        same = existing is not None and (existing.cmd.partition, existing.cmd.variants) == (cmd.partition, cmd.variants)
        if existing is not None and same and not existing.stopping:
            if existing.proc is not None and existing.proc.returncode is None:
                await self._send(WorkerStarted(worker_id=cmd.worker_id, agent_id=self.config.agent_id,
                                               pid=existing.proc.pid, public_key=existing.public_key))
            return
        worker = ManagedWorker(
            cmd=cmd,
            intensity=RestartIntensity(self.config.worker_max_restarts, self.config.worker_restart_window_s),
        )
        self.workers[cmd.worker_id] = worker
        if existing is None:
            await self._launch(worker)
            return
        # The process this one replaces may hold its cores: it exits first, off the mailbox, so
        # heartbeats and commands go on while it drains.
        existing.stopping = True
        self._background(self._replace(existing, worker), f"replace-{cmd.worker_id}")

    async def stop(self, worker_id: str) -> None:
        """Stop a worker; it drains before it exits, so that is waited for off the mailbox. One this
        agent does not run (it crashed for good, or never started) is stopped already: said so."""
        worker = self.workers.get(worker_id)
        if worker is None:
            await self._send(WorkerStopped(worker_id=worker_id, agent_id=self.config.agent_id, exit_code=0))
        elif not worker.stopping:
            self._stop_soon(worker)

    def _stop_soon(self, worker: ManagedWorker) -> None:
        worker.stopping = True
        self._background(self._stop_in_background(worker), f"stop-{worker.cmd.worker_id}")

    def stop_running(self) -> int:
        """Stop every worker not stopping yet; how many that was."""
        running = [w for w in self.workers.values() if not w.stopping]
        for worker in running:
            self._stop_soon(worker)
        return len(running)

    async def stop_all(self) -> None:
        """The agent stops: every process, waited for here."""
        await asyncio.gather(*(self._stop_now(w) for w in list(self.workers.values())))

    async def exited(self, event: WorkerExited) -> None:
        worker = self.workers.get(event.worker_id)
        if worker is None or worker.generation != event.generation or worker.stopping:
            return
        worker.restarts += 1
        self.crashes += 1
        final = WorkerExit.final(event.exit_code)  # it would only fail again: the controller re-plans
        allowed = not final and worker.intensity.record(self._clock.monotonic())
        log.warning(
            "worker exited unexpectedly" if not final else "worker exited: what it was given cannot be served",
            extra={"worker": event.worker_id, "exit_code": event.exit_code, "restart": allowed},
        )
        await self._send(WorkerCrashed(worker_id=event.worker_id, agent_id=self.config.agent_id,
                                       exit_code=event.exit_code, restarts=worker.restarts, will_restart=allowed))
        if allowed:
            await asyncio.sleep(self.config.worker_restart_backoff_s)
            self.restarts += 1
            await self._launch(worker)
        else:
            self._forget(worker)

    async def gone(self, event: WorkerGone) -> None:
        worker = self.workers.get(event.worker_id)
        if worker is not None and worker.generation != event.generation:
            return  # a newer process holds this id: the controller is to hear of that one
        if worker is not None and worker.stopping:
            self._forget(worker)
        await self._send(WorkerStopped(worker_id=event.worker_id, agent_id=self.config.agent_id,
                                       exit_code=event.exit_code))

    async def _replace(self, old: ManagedWorker, new: ManagedWorker) -> None:
        try:
            if old.proc is not None:
                await stop_process(old.proc, self.config.worker_stop_timeout_s)
        finally:
            if old.proc is not None and old.proc.returncode is None:
                old.proc.kill()  # the agent stops mid-drain: the old process is not left behind
            self._forget(old)
        if self.workers.get(new.cmd.worker_id) is new and not new.stopping:
            await self._launch(new)

    async def _launch(self, worker: ManagedWorker) -> None:
        extra = {
            "LETMESH_WORKER_AGENT_ID": self.config.agent_id,
            "LETMESH_STATE_DIR": os.path.abspath(self.config.state_dir),
            "LETMESH_WORKER_HEARTBEAT_INTERVAL_S": str(self.config.worker_heartbeat_interval_s),
            cpu_policy.ENV: self.config.worker_cpu_policy,
            **self.config.runtime_env(),
        }
        drop_worker_credential(worker.credential)  # a restart gets a new one: the old process's key dies with it
        worker.credential = None
        if self.keys is not None and self.keys.server_file is not None:
            _, worker.credential = new_worker_credential(Path(self.config.state_dir) / "credentials",
                                                         worker.cmd.worker_id, self.keys.server_file)
            extra.update(worker.credential.child_env())
        self._launches += 1
        worker.generation = self._launches
        try:
            worker.proc = await spawn_worker(worker.cmd, self.cores, extra)
        except (OSError, ValueError) as exc:  # fork refused, a value no environment can hold
            log.error("worker could not be started: %s", exc, extra={"worker": worker.cmd.worker_id})
            worker.proc = None
            self._forget(worker)
            await self._send(WorkerCrashed(worker_id=worker.cmd.worker_id, agent_id=self.config.agent_id,
                                           exit_code=-1, restarts=worker.restarts, will_restart=False))
            return
        generation, proc = worker.generation, worker.proc
        log.info("worker started", extra={"worker": worker.cmd.worker_id, "pid": proc.pid})
        await self._send(WorkerStarted(worker_id=worker.cmd.worker_id, agent_id=self.config.agent_id, pid=proc.pid,
                                       public_key=worker.public_key))

        async def wait_exit() -> None:
            code = await proc.wait()
            try:
                self._tell(WorkerExited(worker.cmd.worker_id, generation, code))
            except Exception:
                pass  # the agent is stopping

        worker.waiter = self._background(wait_exit(), f"wait-{worker.cmd.worker_id}")

    def _forget(self, worker: ManagedWorker) -> None:
        """The worker's process is gone for good: so are its entry and its credential."""
        if self.workers.get(worker.cmd.worker_id) is worker:
            del self.workers[worker.cmd.worker_id]
        drop_worker_credential(worker.credential)
        worker.credential = None

    async def _stop_in_background(self, worker: ManagedWorker) -> None:
        code = 0
        if worker.proc is not None:
            code = await stop_process(worker.proc, self.config.worker_stop_timeout_s)
        try:
            self._tell(WorkerGone(worker.cmd.worker_id, worker.generation, code))
        except Exception:
            pass  # the agent is stopping; stop_all reaps what is left

    async def _stop_now(self, worker: ManagedWorker) -> None:
        worker.stopping = True
        if worker.proc is not None:
            await stop_process(worker.proc, self.config.worker_stop_timeout_s)
        self._forget(worker)
