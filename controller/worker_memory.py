"""What a worker process holds beyond the memory the planner reserves for its variants.

The planner reserves per worker its variants' needs (``Variant.memory_need``: a manifest's
``memory_mb``, else weights and one batch of inputs and outputs). A worker process also holds its
runtime (torch and ONNX Runtime take ~150 MiB of their own per process here, beside ~90 MiB of
shared libraries every worker maps), the activations of its batches and the arenas its runtime
keeps. Workers on CPU devices report the most memory of their own they have held
(``WorkerReady.memory_peak_bytes``); per device, the largest excess of a ready worker's report over
its reservation is what the planner adds for each new worker there, and per device kind the
largest of its devices' figures stands for a device none of whose workers has reported yet (before
any has, a configured prior: ``cpu_worker_memory_mb``). So a memory-bound board is not filled
with workers the kernel would kill. Pure, with an injected clock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from controller.registry import WorkerRecord
from controller.repository import Variant, reservation
from protocol.types import WorkerState

# A device's figure falls only once its workers have read lower for this long: a re-plan's
# fresh processes have not reached their peaks yet, and a figure that fell at once would pack the
# workers back that the next rise takes away again.
FALL_AFTER_S = 600.0


class WorkerOverhead:
    """Figures per device ("agent/device") and per device kind, in bytes."""

    def __init__(self, *, fall_after_s: float = FALL_AFTER_S, prior: Mapping[str, int] | None = None) -> None:
        self.fall_after_s = fall_after_s
        self.prior = {kind: n for kind, n in (prior or {}).items() if n > 0}  # device kind -> bytes
        self._device: dict[str, int] = {}
        self._kind_of: dict[str, str] = {}
        self._lower_since: dict[str, float] = {}
        self._lower_max: dict[str, int] = {}  # the most read there since it read lower

    def observe(self, workers: Iterable[WorkerRecord], variants: Mapping[str, Variant], now: float,
                agents: Collection[str] | None = None) -> dict[str, int]:
        """Take in what the ready workers report now; the figures after it (see :meth:`known`).
        A device's figure rises at once, and falls only after its workers have reported less for
        ``fall_after_s``, to the most they reported meanwhile; a device whose workers report nothing
        keeps its figure, until its agent is no longer among ``agents`` (None: all are kept)."""
        seen: dict[str, int] = {}
        for w in workers:
            if w.state != WorkerState.READY or w.memory_peak_bytes <= 0 or not w.in_plan:
                continue
            place = f"{w.plan.agent_id}/{w.plan.partition.device_id}"
            self._kind_of[place] = w.plan.partition.kind
            excess = max(0, w.memory_peak_bytes - reservation(variants, w.plan.variants))
            seen[place] = max(seen.get(place, -1), excess)
        for place, n in seen.items():
            if n >= self._device.get(place, -1):
                self._device[place] = n
                self._lower_since.pop(place, None)
                continue
            self._lower_max[place] = max(n, self._lower_max.get(place, 0) if place in self._lower_since else 0)
            if now - self._lower_since.setdefault(place, now) >= self.fall_after_s:
                self._device[place] = self._lower_max[place]
                self._lower_since.pop(place, None)
        for place in set(self._lower_since) - set(seen):
            del self._lower_since[place]  # nothing reported there now: the figure stands, no fall begins
        if agents is not None:  # an agent forgotten takes its devices' figures with it
            for place in [p for p in self._device if p.split("/", 1)[0] not in agents]:
                del self._device[place]
                self._lower_since.pop(place, None)
        return self.known()

    def known(self) -> dict[str, int]:
        """"agent/device" -> bytes for each device whose workers reported, and device kind -> the
        largest of its devices' figures (for a device with none), else the kind's ``prior``."""
        out = dict(self._device)
        for place, n in self._device.items():
            kind = self._kind_of[place]
            out[kind] = max(out.get(kind, 0), n)
        for kind, n in self.prior.items():
            out.setdefault(kind, n)  # what workers reported replaces the prior, higher or lower
        return out
