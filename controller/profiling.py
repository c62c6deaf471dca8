"""Which profiling runs the controller asks of agents, and how far they are. Pure.

A device needs profiling when some variant has no stored profile for its device kind at some
partition size of its menu. The
partition menu is the device kind's: core counts on a CPU (1, 2, 4, ... up to its cores), MPS
percentages {20, 40, 50, 60, 80, 100} on a CUDA GPU whose host runs an MPS control daemon, the
whole GPU on one without (nothing would enforce a smaller share).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.repository import Variant
from mesh.latency import warmup_batches
from protocol.message import ProfileDevice
from protocol.types import DeviceInfo, ProfileSample

MPS_MENU = (20, 40, 50, 60, 80, 100)
# A controller process numbers its profiling runs from epoch x this + 1: unique across restarts, so
# an agent never mistakes a new run for a re-send, and a report says which process began its run
# (as routing table versions are numbered, epoch << 32; no process runs 2**32 profiling runs).
RUN_IDS_PER_EPOCH = 1 << 32


def first_run_id(epoch: int) -> int:
    return epoch * RUN_IDS_PER_EPOCH + 1


def run_epoch(request_id: int) -> int:
    """The epoch of the controller process that began the profiling run ``request_id``."""
    return request_id // RUN_IDS_PER_EPOCH


def measured_as(variant: Variant) -> str:
    """What a profile of ``variant`` measures: its artifact's bytes and the runtime that computes
    them (backend and precision). Profiles of a variant stored under another are of something else."""
    return f"{variant.sha256} {variant.spec().served_as}"


def remeasured(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Variants of ``current`` (name -> :func:`measured_as`) whose stored profiles measured
    something else (``stored``, the same mapping as of the profiles kept): their file was replaced
    under the same name, or the manifest moved it to another backend or precision. A variant with
    no entry in ``stored`` is not among them (profiles kept before the store said what they measured
    are taken as of the artifact present then)."""
    return sorted(name for name, now in current.items() if stored.get(name, now) != now)


def partition_menu(device: DeviceInfo) -> tuple[int, ...]:
    if device.kind == "cuda":
        return MPS_MENU if device.mps else (100,)
    sizes = {device.cores}
    size = 1
    while size < device.cores:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def unprofiled(variants: Iterable[Variant], device: DeviceInfo, samples: Iterable[ProfileSample]) -> list[Variant]:
    """Variants without a stored profile at some partition size of ``device``'s menu (profiles are
    kept per device kind: a GPU with an MPS daemon after one without, or a CPU with more cores than
    the last, still has sizes to measure)."""
    have = {(s.variant, s.partition) for s in samples if s.device_kind == device.kind}
    menu = partition_menu(device)
    return sorted((v for v in variants if any((v.name, p) not in have for p in menu)), key=lambda v: v.name)


@dataclass(slots=True)
class ProfilingRuns:
    """Runs in flight by (agent, request id) -> progress, and the devices each agent is still to profile.

    An agent runs one profiling process tree at a time (a new command cancels its run in
    progress), so a host's devices are profiled one after another: ``commands`` hands out the
    first device that needs it and queues the rest; ``next_commands``, called when a run ends,
    hands out the next. A device whose run failed is not asked again on its own (it would fail
    the same way, and again); an operator's re-run, or the agent registering anew, asks again.
    """

    next_id: int = 1
    running: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    device_of: dict[tuple[str, int], str] = field(default_factory=dict)
    sent: dict[tuple[str, int], ProfileDevice] = field(default_factory=dict)
    whole: dict[tuple[str, int], bool] = field(default_factory=dict)  # the run measures every variant
    queued: dict[str, dict[str, bool]] = field(default_factory=dict)  # agent -> device -> everything
    failed: set[tuple[str, str]] = field(default_factory=set)  # (agent, device)
    profiled: set[tuple[str, str]] = field(default_factory=set)  # (variant, device kind) with a stored profile
    grew: bool = False  # a (variant, device kind) new to ``profiled`` came in since ``take_grew``

    def commands(
        self, agent_id: str, devices: Sequence[DeviceInfo], variants: Sequence[Variant], samples: Sequence[ProfileSample],
        *, everything: bool = False, colocation: bool = True, repeats: int = 20,
    ) -> list[ProfileDevice]:
        """A ProfileDevice command for the first of the agent's devices that lack profiles (all of
        them if ``everything``), unless the agent is profiling already; the others wait their turn."""
        queue = self.queued.setdefault(agent_id, {})
        measuring = {device for (agent, _), device in self.device_of.items() if agent == agent_id}
        for device in devices:
            if everything:
                self.failed.discard((agent_id, device.device_id))
                queue[device.device_id] = True
            elif ((agent_id, device.device_id) not in self.failed and device.device_id not in measuring
                  and unprofiled(variants, device, samples)):
                queue.setdefault(device.device_id, False)
        return self.next_commands(agent_id, devices, variants, samples, colocation=colocation, repeats=repeats)

    def next_commands(
        self, agent_id: str, devices: Sequence[DeviceInfo], variants: Sequence[Variant], samples: Sequence[ProfileSample],
        *, colocation: bool = True, repeats: int = 20,
    ) -> list[ProfileDevice]:
        """The command for the agent's next queued device that still needs profiling, if it runs none."""
        if any(a == agent_id for a, _ in self.running):
            return []
        queue = self.queued.get(agent_id, {})
        for device in devices:
            if device.device_id not in queue:
                continue
            everything = queue.pop(device.device_id)
            if not everything and (agent_id, device.device_id) in self.failed:
                continue  # it failed since it was queued
            todo = sorted(variants, key=lambda v: v.name) if everything else unprofiled(variants, device, samples)
            if not todo:
                continue
            batches = sorted({b for v in todo for b in warmup_batches(v.max_batch)})
            request_id = self.next_id
            self.next_id += 1
            self.running[(agent_id, request_id)] = (0, 0)
            self.device_of[(agent_id, request_id)] = device.device_id
            self.whole[(agent_id, request_id)] = everything
            command = self.sent[(agent_id, request_id)] = ProfileDevice(
                request_id=request_id,
                device_id=device.device_id,
                variants=tuple(v.spec() for v in todo),
                partitions=partition_menu(device),
                batches=tuple(batches),
                colocation=colocation,
                repeats=repeats,
            )
            return [command]
        return []

    def progress(self, agent_id: str, request_id: int, completed: int, total: int, done: bool,
                 failed: bool = False, again: bool = False) -> None:
        """A run's report. ``again``: one that failed is queued once more, as it was asked (what
        made it fail was set aside meanwhile), rather than marked failed."""
        if done:
            self.running.pop((agent_id, request_id), None)
            self.sent.pop((agent_id, request_id), None)
            device = self.device_of.pop((agent_id, request_id), None)
            whole = self.whole.pop((agent_id, request_id), False)
            if again and device is not None:
                self.queued.setdefault(agent_id, {})[device] = whole
            elif failed and device is not None:
                self.failed.add((agent_id, device))
        elif (agent_id, request_id) in self.running:
            self.running[(agent_id, request_id)] = (completed, total)

    def in_flight(self, agent_id: str) -> list[ProfileDevice]:
        """The commands of the agent's runs not reported done."""
        return [cmd for (agent, _), cmd in sorted(self.sent.items()) if agent == agent_id]

    def pending(self) -> set[tuple[str, str]]:
        """(agent, device) of every run in flight or waiting its turn."""
        out = {(agent, device) for (agent, _), device in self.device_of.items()}
        return out | {(agent, device) for agent, queue in self.queued.items() for device in queue}

    def pending_kinds(self, devices: Mapping[str, Sequence[DeviceInfo]]) -> frozenset[tuple[str, str]]:
        """(agent, device kind) of every device being profiled or waiting its turn."""
        kinds = {(agent, d.device_id): d.kind for agent, ds in devices.items() for d in ds}
        return frozenset((agent, kinds[(agent, device)]) for agent, device in self.pending() if (agent, device) in kinds)

    def measured(self, samples: Iterable[ProfileSample]) -> None:
        """Samples stored: note whether any variant now has a profile on a device kind it had none for."""
        fresh = {(s.variant, s.device_kind) for s in samples} - self.profiled
        if fresh:
            self.profiled |= fresh
            self.grew = True

    def take_grew(self) -> bool:
        """Whether new (variant, device kind) profiles came in since the last call."""
        grew, self.grew = self.grew, False
        return grew

    def retry_failed(self, agent_id: str) -> None:
        """The agent's failed devices may be asked again (what made them fail was set aside)."""
        self.failed = {f for f in self.failed if f[0] != agent_id}

    def forget_agent(self, agent_id: str) -> None:
        for key in [k for k in self.running if k[0] == agent_id]:
            del self.running[key]
            self.device_of.pop(key, None)
            self.sent.pop(key, None)
            self.whole.pop(key, None)
        self.queued.pop(agent_id, None)
        self.retry_failed(agent_id)

    def describe(self) -> tuple[str, ...]:
        """One line per run: ``agent: done/total``, or ``agent: starting`` before its first report."""
        return tuple(f"{agent}: {done}/{total}" if total else f"{agent}: starting"
                     for (agent, _), (done, total) in sorted(self.running.items()))


# The longest a re-plan waits for a device's profiles: a run whose end never arrives (its agent
# gone quiet mid-run, its report lost) must not hold the mesh's plan for good.
PROFILE_WAIT_MAX_S = 180.0


def awaited_kinds(agents: Mapping[str, Sequence[DeviceInfo]], variants: Iterable[str], samples: Iterable[ProfileSample],
                  profiling: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The device kinds being profiled on one of ``agents`` (placeable ones) where some variant has
    no profile at some partition size of such a device's menu: a plan made from a run's first sizes
    would be made again, and its move with it, when the run ends. ``profiling``: (agent, device kind)
    of each device being measured or queued."""
    measuring = set(profiling)
    present = [d for agent_id, devices in agents.items() for d in devices if (agent_id, d.kind) in measuring]
    if not present:
        return frozenset()
    profiled = {(s.variant, s.device_kind, s.partition) for s in samples}
    names = list(variants)
    return frozenset(d.kind for d in present
                     if any((v, d.kind, size) not in profiled for v in names for size in partition_menu(d)))


@dataclass(slots=True)
class ProfileWait:
    """A routine re-plan waiting for devices being profiled: since when, and for which kinds."""

    max_s: float = PROFILE_WAIT_MAX_S
    waiting_for: frozenset[str] = frozenset()
    since: float | None = None

    def hold(self, awaited: frozenset[str], now: float) -> bool:
        """Whether a re-plan waits for ``awaited`` (none: it goes ahead), at most ``max_s`` in all."""
        if awaited:
            self.since = now if self.since is None else self.since
            if now - self.since < self.max_s:
                self.waiting_for = awaited
                return True
        self.waiting_for, self.since = frozenset(), None
        return False

    def released(self, profiling: Iterable[tuple[str, str]]) -> bool:
        """A held re-plan whose devices are no longer being profiled (their runs ended, with or
        without profiles): it is due now."""
        return bool(self.waiting_for) and not any(kind in self.waiting_for for _, kind in profiling)
