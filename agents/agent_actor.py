"""The device agent: registers its host with the controller and runs the worker processes asked of it.

Commands from the controller are idempotent: a StartWorker for a worker that already runs
with the same spec changes nothing, so the controller can re-send its desired state after a
restart. The processes themselves are :class:`agents.worker_fleet.WorkerFleet`'s: a worker that
exits without being asked to is restarted under an intensity limit.

Registration: each carries this process's random instance id and the workers it runs. While
the controller does not answer, one registration is outstanding at a time: the next (with the
state of then) goes after a bounded, growing wait, on a fresh connection when the last one went
unanswered, which drops whatever the dead one had queued, so a healed link does not replay a
backlog. On a clean stop the agent deregisters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from pathlib import Path

import zmq.asyncio

from agents import artifact_cache
from agents.config import AgentConfig
from agents.managed_worker import ManagedWorker, Tick, WorkerExited, WorkerGone
from agents.metrics import AgentMetrics
from agents.probe import probe_devices, usable_cores
from agents.profile_runner import ProfileRunner
from agents.worker_fleet import WorkerFleet
from mesh.actor import Actor
from mesh.clock import Clock, SystemClock
from mesh.liveness import Liveness
from mesh.lifecycle import feed, tick
from mesh.keys import ClientKeys, clear_worker_credentials, client_keys, rejoin_hint
from mesh.metrics_http import MetricsServer
from mesh.links import link_options
from mesh.transport import Endpoint, EndpointClosed, Incoming
from protocol.types import RunningWorker, VariantSpec
from protocol.message import (
    DeregisterAgent,
    ErrorReply,
    Heartbeat,
    ProfileDevice,
    ProfileProgress,
    RegisterAgent,
    RegisterAgentReply,
    StartWorker,
    StopWorker,
    VariantLoadFailed,
)

log = logging.getLogger(__name__)

DEREGISTER_LINGER_MS = 1000  # how long a stopping agent's goodbye may wait to be sent
# After this many registrations the controller's link took without a word back, the agent warns
# (at most once per UNHEARD_SAY_EVERY_S) that another process may hold its name.
UNHEARD_REGISTRATIONS = 3
UNHEARD_SAY_EVERY_S = 60.0
CACHE_CHECK_S = 30.0  # the artifact cache's bound is checked this often
CACHE_RECENT_S = 600.0  # cache entries used (started on, profiled, fetched or converted) this recently stay


class AgentActor(Actor):
    """One per host. All state is touched only from ``handle``; background tasks only ``tell``."""

    def __init__(self, config: AgentConfig, *, ctx: zmq.asyncio.Context, clock: Clock | None = None) -> None:
        super().__init__(name=f"agent:{config.agent_id}", mailbox_size=10_000)
        self.config = config
        self._ctx = ctx
        self._clock = clock or SystemClock()
        self._endpoint: Endpoint | None = None
        self._tasks: list[asyncio.Task] = []
        self.fleet = WorkerFleet(config, self._clock, send=self._send, tell=self.tell, background=self._background)
        self._registered = False
        self._revoked = False  # the controller refused this agent's key; cleared if it ever takes it again
        self._last_register = float("-inf")
        self._register_wait = config.register_retry_s
        self.instance = uuid.uuid4().hex[:12]  # this process: a restart is a new instance
        self.registrations_sent = 0
        self._unanswered = False  # a registration went out and no reply came yet
        # Registrations the link took with nothing heard from the controller since, and when that
        # was last said: a controller that drops what this agent sends (another process holds its
        # name) gives no other sign.
        self._taken_unanswered = 0
        self._unheard_said = float("-inf")
        self._feed: asyncio.Task | None = None
        self._controller = Liveness(interval_s=config.heartbeat_interval_s, missed_limit=config.missed_heartbeats)
        self._seq = 0
        self._cores: list[int] = []
        self._profiling: tuple[int, asyncio.Task] | None = None  # (request id, run) of the latest ProfileDevice
        self._profiled: tuple[VariantSpec, ...] = ()  # its variants: the artifact cache keeps them while it runs
        self._cache_checked = float("-inf")
        self._started_at = 0.0
        self.cache_removed = 0  # entries the artifact cache's bound removed
        self.registered = asyncio.Event()
        self._keys: ClientKeys | None = None
        self._devices: tuple = ()
        self.metrics = AgentMetrics(self)
        self._metrics_server: MetricsServer | None = None

    @property
    def metrics_url(self) -> str:
        return self._metrics_server.url if self._metrics_server is not None else ""

    @property
    def devices(self) -> tuple:
        return self._devices

    @property
    def is_registered(self) -> bool:
        return self._registered

    @property
    def profiling(self) -> bool:
        return self._profiling is not None and not self._profiling[1].done()

    def managed(self) -> dict[str, ManagedWorker]:
        """The workers this agent manages, by id (for metrics; not to be changed)."""
        return self.fleet.workers

    async def on_start(self) -> None:
        if self.config.metrics_port:  # first: a taken port fails the start before anything else is held
            self._metrics_server = MetricsServer(self.metrics.registry, self.config.metrics_host,
                                                 self.config.metrics_port)
            await self._metrics_server.start()
        self._cores = self.fleet.cores = usable_cores(self.config.max_cores)
        self._devices = probe_devices(self.config.max_cores, max_memory_bytes=self.config.max_memory_mb * 2**20)
        if stale := clear_worker_credentials(Path(self.config.state_dir) / "credentials"):
            log.info("removed %d worker secrets a previous agent process left", stale)
        if self.config.keys_dir:  # profilers authenticate with the agent's key pair; workers get their own
            self._keys = self.fleet.keys = client_keys(self.config.keys_dir, "agent", self.config.agent_id)
        self._started_at = self._clock.monotonic()
        self._dial()
        self._tasks = [asyncio.create_task(tick(self, self.config.heartbeat_interval_s, Tick()), name="agent-tick")]
        await self._register()

    def _dial(self) -> None:
        self._endpoint = Endpoint.dealer(self._ctx, self.config.controller, f"agent:{self.config.agent_id}",
                                         security=self._keys, link=link_options(self.config), control=True)
        self._feed = asyncio.create_task(feed(self._endpoint, self), name="agent-recv")

    async def _redial(self) -> None:
        """A fresh connection to the controller; what the old one had queued is dropped."""
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)
        if self._endpoint is not None:
            self._endpoint.close()
        self._dial()

    async def on_stop(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self._profiling is not None:  # its processes are gone once it returns
            self._profiling[1].cancel()
            await asyncio.gather(self._profiling[1], return_exceptions=True)
        for task in (*self._tasks, *([self._feed] if self._feed else [])):
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._feed] if self._feed else []), return_exceptions=True)
        if self._endpoint is not None:
            # Leave cleanly, first: the controller takes the workers out of routing while they
            # drain, and forgets this agent now instead of declaring it lost later.
            await self._send(DeregisterAgent(agent_id=self.config.agent_id, instance=self.instance))
        await self.fleet.stop_all()
        if self._endpoint is not None:
            self._endpoint.close(linger_ms=DEREGISTER_LINGER_MS)

    @property
    def workers(self) -> dict[str, int]:
        """worker id -> pid of the running process (0 when not running)."""
        return self.fleet.pids()

    def running(self) -> tuple[RunningWorker, ...]:
        """The workers this agent runs (not those it is stopping), as a registration reports them."""
        return self.fleet.running()

    @property
    def worker_crashes(self) -> int:
        return self.fleet.crashes

    @property
    def worker_restarts(self) -> int:
        return self.fleet.restarts

    async def handle(self, msg: object) -> object:
        match msg:
            case Tick():
                await self._on_tick()
            case WorkerExited():
                await self.fleet.exited(msg)
            case WorkerGone():
                await self.fleet.gone(msg)
            case Incoming(msg=inner):
                self._taken_unanswered = 0
                self._controller.beat("controller", self._clock.monotonic())
                await self._on_controller(inner)
            case ProfileProgress() | VariantLoadFailed():  # from the profiling task, on its way to the controller
                await self._send(msg)
        return None

    async def _on_controller(self, msg: object) -> None:
        match msg:
            case RegisterAgentReply(controller_epoch=epoch):
                if not self._registered:
                    log.info("registered with controller", extra={"epoch": epoch})
                self._registered = True
                self._revoked = False
                self._unanswered = False
                self._register_wait = self.config.register_retry_s
                self.registered.set()
            case Heartbeat():
                if not self._registered and not self._revoked and self._may_register_now():
                    await self._register()  # the controller is reachable again: say so at once
            case ErrorReply(code="unknown_peer"):
                # The controller restarted or declared this agent lost; several may arrive for
                # heartbeats sent before: one registration answers them all.
                self._registered = False
                if self._may_register_now():
                    await self._register()
            case StartWorker():
                await self.fleet.start(msg)
                artifact_cache.touch(self.cache_dir, artifact_cache.in_use(msg.variants))
            case StopWorker(worker_id=worker_id):
                await self.fleet.stop(worker_id)
            case ProfileDevice():
                self._start_profiling(msg)
            case ErrorReply(code="revoked", message=text):
                # This host's key was taken back: nothing it runs may serve any more (the
                # gateways refuse its workers too). Stop them rather than leave them orphaned;
                # registering again is tried, and refused, until someone stops this agent: at the
                # longest retry interval, not every beat.
                self._registered = False
                self._register_wait = self.config.register_retry_max_s
                stopped = self.fleet.stop_running()
                if not self._revoked:
                    log.error("the controller at %s refuses this agent: %s; %d worker(s) stopped. To serve again, %s",
                              self.config.controller, text, stopped, rejoin_hint("agent", self.config.agent_id))
                self._revoked = True
            case ErrorReply(code=code, message=text):
                log.warning("controller error", extra={"code": code, "error": text})
            case other:
                log.warning("unexpected message from controller", extra={"type": type(other).__name__})

    def _background(self, coro, name: str) -> asyncio.Task:
        """A task ``on_stop`` cancels and awaits; finished ones are let go (a long-lived agent starts and
        stops workers for every re-plan)."""
        self._tasks = [t for t in self._tasks if not t.done()]
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def _start_profiling(self, cmd: ProfileDevice) -> None:
        """Run it in the background; a re-sent request is ignored, a new one supersedes the running one."""
        previous, previous_id = None, 0
        if self._profiling is not None and not self._profiling[1].done():
            previous_id, previous = self._profiling
            if previous_id == cmd.request_id:
                return
            previous.cancel()
        self._profiled = cmd.variants
        artifact_cache.touch(self.cache_dir, artifact_cache.in_use(cmd.variants))
        runner = ProfileRunner(
            cmd,
            agent_id=self.config.agent_id,
            devices=self._devices,
            cores=self._cores,
            controller=self.config.controller,
            state_dir=Path(self.config.state_dir),
            emit=self.tell,
            extra_env={**(self._keys.child_env() if self._keys else {}), **self.config.runtime_env()},
            serving=self.fleet.serving_on(),
            neighbours=lambda: [pid for pid in self.fleet.pids().values() if pid],
        )

        async def profile() -> None:
            if previous is not None:  # one run at a time: they would measure each other
                await asyncio.gather(previous, return_exceptions=True)
                self.tell(ProfileProgress(request_id=previous_id, agent_id=self.config.agent_id, device_kind="",
                                          completed=0, total=0, done=True,
                                          error=f"superseded by request {cmd.request_id}"))
            await runner.run()

        self._profiling = (cmd.request_id, asyncio.create_task(profile(), name=f"profile-{cmd.request_id}"))

    def _may_register_now(self) -> bool:
        return self._clock.monotonic() - self._last_register >= self.config.heartbeat_interval_s

    async def _register(self) -> None:
        self._last_register = self._clock.monotonic()
        self.registrations_sent += 1
        self._unanswered = True
        msg = RegisterAgent(
            agent_id=self.config.agent_id,
            hostname=socket.gethostname(),
            devices=self._devices,
            pid=os.getpid(),
            instance=self.instance,
            workers=self.running(),
        )
        assert self._endpoint is not None
        # The control link queues nothing while it is not connected (a fresh dial has not finished
        # its handshake yet): wait, boundedly, for it to take the registration. Not sent in time is
        # the same as unanswered: the next attempt dials afresh.
        try:
            async with asyncio.timeout(self.config.heartbeat_interval_s):
                await self._endpoint.send(msg)
        except (TimeoutError, zmq.ZMQError, EndpointClosed):
            log.debug("registration not taken by the controller link in time")
            return
        self._taken_unanswered += 1
        now = self._clock.monotonic()
        if self._taken_unanswered >= UNHEARD_REGISTRATIONS and now - self._unheard_said >= UNHEARD_SAY_EVERY_S:
            self._unheard_said = now
            log.warning("the controller at %s took %d registrations and answered none: either another agent is "
                        "connected as %r (the same keys folder on two hosts, or two agents with one id) and the "
                        "controller drops what this one sends, or the controller is not handling messages. If the "
                        "former, stop the other agent or give this host its own id (and key: letmesh keys add agent "
                        "NEWID)", self.config.controller, self._taken_unanswered, self.config.agent_id)

    @property
    def cache_dir(self) -> Path:
        return Path(self.config.state_dir) / "artifacts"

    def _tend_cache(self) -> None:
        """Keep the artifact cache within its bound; what a worker or profiling run here uses stays,
        and so does what was used within CACHE_RECENT_S (another process on this host may be loading
        it). Only while registered and CACHE_CHECK_S after the agent started: until the controller
        has sent its layout, the agent does not know what it is about to run."""
        now = self._clock.monotonic()
        self._cache_checked = now
        if not self.config.artifact_cache_mb or not self._registered or now - self._started_at < CACHE_CHECK_S:
            return
        specs = [v for w in self.fleet.workers.values() if not w.stopping for v in w.cmd.variants]
        if self.profiling:
            specs.extend(self._profiled)
        try:
            removed = artifact_cache.prune(self.cache_dir, self.config.artifact_cache_mb * 2**20,
                                           artifact_cache.in_use(specs), recent_s=CACHE_RECENT_S)
        except OSError as exc:  # the cache's folder cannot be read: serving goes on
            log.warning("artifact cache: cannot check %s: %s", self.cache_dir, exc)
            return
        self.cache_removed += len(removed)

    async def _on_tick(self) -> None:
        now = self._clock.monotonic()
        if now - self._cache_checked >= CACHE_CHECK_S:
            self._tend_cache()
        for _ in self._controller.lost(now):
            self._registered = False
            if self._revoked:
                continue  # it refused this agent: nothing serves, registering stays at the longest interval
            log.warning("controller lost; serving goes on, re-registering until it is back")
            self._register_wait = 0.0  # at once, on a fresh connection
        if not self._registered:
            if now - self._last_register >= self._register_wait:
                if self._unanswered:  # the link may be dead with a queue behind it: start afresh
                    await self._redial()
                await self._register()
                self._register_wait = min(max(self._register_wait * 2, self.config.register_retry_s),
                                          self.config.register_retry_max_s)
            return  # no heartbeats until registered: they would only queue on a dead link
        self._seq += 1
        await self._send(Heartbeat(sender=self.config.agent_id, role="agent", seq=self._seq))

    async def _send(self, msg: object) -> None:
        assert self._endpoint is not None
        try:
            self._endpoint.send_nowait(msg)
        except zmq.Again:
            log.debug("controller link is backed up; dropped", extra={"type": type(msg).__name__})
