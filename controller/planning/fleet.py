"""Mutable state of one planning call: devices, their gpu-lets, and the moves that place load on them.

Every move is tried on copies of one device's gpu-lets and committed only when accepted, so the
state is always a valid plan: each gpu-let's duty cycle fits its round, every variant in it meets
its SLO under the predicted slowdown, no device is over-committed. Rate that a move takes away
from neighbours (interference) is collected in ``lost`` for the caller to place again.
Memory taken by a gpu-let is not given back within one call if interference later empties it
(conservative). Private to the planning package; created and discarded inside ``plan()``;
single-threaded.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from controller.planning.cycle import (
    fit_cycle,
    max_extra,
    max_single,
    round_time,
    saturated,
    scale_to_fit,
)
from controller.planning.error import UnknownProfile
from controller.planning.interference import InterferenceModel
from controller.planning.profile import LatencyModel
from controller.planning.state import Device, Item, Let, Need, split_limit

if TYPE_CHECKING:
    from controller.planning.planner import DeviceSlot

__all__ = ["MAX_ATTEMPTS", "TINY_RPS", "Device", "Fleet", "Item", "Let", "Need", "overhead_of", "split_limit"]

TINY_RPS = 1e-6  # rates below this are rounding noise, not load
MEMORY_FRACTION = 0.9  # gpu-let's admission: 90 % of device memory
SETTLE_ROUNDS = 8
MAX_ATTEMPTS = 6  # interference-checked candidates tried per placement before giving up


def overhead_of(overhead: int | Mapping[str, int], device_id: str, kind: str) -> int:
    """The memory one more worker holds on ``device_id`` beyond its variants' needs: one figure
    for every device, or a mapping keyed by device id, else by device kind (0 where neither is)."""
    if isinstance(overhead, int):
        return overhead
    return overhead.get(device_id, overhead.get(kind, 0))


class Fleet:
    """Devices and gpu-lets under construction. See the module docstring for the invariants."""

    def __init__(
        self,
        devices: Sequence[DeviceSlot],
        needs: Mapping[str, Need],
        latency: LatencyModel,
        interference: InterferenceModel,
        *,
        max_batch: int,
        max_models: int,
        worker_overhead_bytes: int | Mapping[str, int],
    ) -> None:
        self.needs = needs
        self.latency = latency
        self.interference = interference
        self.max_batch = max_batch
        self.max_models = max_models
        # Bytes each new worker holds beyond its variants' needs (see overhead_of).
        self.overhead: Mapping[str, int] | int = worker_overhead_bytes
        self.devices = [
            Device(i, slot, split_limit(slot.kind, slot.capacity)) for i, slot in enumerate(sorted(devices, key=lambda d: d.device_id))
        ]
        self.lost: dict[str, float] = {}
        # (device index, serial) of gpu-lets kept as a worker runs them (see policy.retain): their
        # size and variants stay; only their rates may change.
        self.frozen: set[tuple[int, int]] = set()
        self.reserve = False  # size new gpu-lets for the worst plausible neighbour up front
        self._serial = 0
        self._curves: dict[tuple[str, str, int], tuple[float, ...]] = {}
        self._worst: dict[tuple[str, int], tuple[str, int, int] | None] = {}
        # Per kind: whole (untouched) devices as (capacity, index); partly used ones as (free, index).
        self._whole: dict[str, list[tuple[int, int]]] = {}
        self._partial: dict[str, list[tuple[int, int]]] = {}
        for d in self.devices:
            self._whole.setdefault(d.slot.kind, []).append((d.slot.capacity, d.index))
            self._partial.setdefault(d.slot.kind, [])
        for spots in self._whole.values():
            spots.sort()
        # Per kind: gpu-lets with idle cycle time (temporal sharing candidates) as (device, serial);
        # per variant: devices where a gpu-let serving it sits alone with room to widen.
        self._open: dict[str, set[tuple[int, int]]] = {kind: set() for kind in self._whole}
        self._lone: dict[str, set[int]] = {}
        self._capacity: dict[str, int] = {}
        for d in self.devices:
            self._capacity[d.slot.kind] = max(self._capacity.get(d.slot.kind, 0), d.slot.capacity)

    # --- lookups ----------------------------------------------------------------------------

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._whole))

    def capacity(self, kind: str) -> int:
        """The largest capacity among devices of ``kind``."""
        return self._capacity[kind]

    def curve(self, variant: str, kind: str, size: int) -> tuple[float, ...]:
        key = (variant, kind, size)
        found = self._curves.get(key)
        if found is None:
            found = self._curves[key] = tuple(self.latency.curve(variant, kind, size, self.max_batch))
        return found

    def let_curve(self, variant: str, kind: str, let: Let) -> tuple[float, ...]:
        """The variant's curve on that gpu-let, cut at the batch it may run there."""
        curve = self.curve(variant, kind, let.size)
        cap = let.caps.get(variant, 0)
        return curve[:cap] if 0 < cap < len(curve) else curve

    def solo_rate(self, variant: str, kind: str, size: int, alpha: float = 1.0) -> float:
        """Saturated rate of the variant alone on ``size`` units of ``kind``; 0 when no profile."""
        try:
            return max_single(self.curve(variant, kind, size), self.needs[variant].slo_ms, alpha)
        except UnknownProfile:
            return 0.0

    def solo_batch(self, variant: str, kind: str, size: int) -> int:
        """Saturated batch of the variant alone on ``size`` units (0 when the SLO cannot be met)."""
        try:
            return saturated(self.curve(variant, kind, size), self.needs[variant].slo_ms, 1.0)[0]
        except UnknownProfile:
            return 0

    def worst_neighbour(self, kind: str, size: int) -> tuple[str, int, int] | None:
        """The demanded variant, running saturated on ``size`` units, that slows others the most."""
        key = (kind, size)
        if key not in self._worst:
            pool = [(v, size, b) for v in self.needs if (b := self.solo_batch(v, kind, size))]
            if not pool:
                self._worst[key] = None
            else:  # ranked before the clamp at 1: a probe victim the model finds insensitive ties them all
                self._worst[key] = max(pool, key=lambda w: (self.interference.pressure(kind, w), w))
        return self._worst[key]

    def expected_alpha(self, variant: str, kind: str, size: int, rest: int) -> float:
        """Predicted slowdown of ``variant`` saturating ``size`` units while the most aggressive
        demanded variant saturates the ``rest`` of the device. The model is linear in the
        neighbour's features, so no real neighbour is worse; 1.0 when nothing can share."""
        if rest <= 0 or not self.interference.enabled:
            return 1.0
        b1 = self.solo_batch(variant, kind, size)
        worst = self.worst_neighbour(kind, rest)
        if not b1 or worst is None:
            return 1.0
        return self.interference.predict(kind, (variant, size, b1), worst)

    def whole_free(self, kind: str) -> list[tuple[int, int]]:
        return self._whole.get(kind, [])

    def partial_free(self, kind: str) -> list[tuple[int, int]]:
        return self._partial.get(kind, [])

    def open_lets(self, kind: str) -> list[tuple[Device, Let]]:
        """Gpu-lets of ``kind`` whose round leaves part of the duty cycle idle."""
        out = []
        for index, serial in sorted(self._open.get(kind, ())):
            device = self.devices[index]
            out.append((device, next(let for let in device.lets if let.serial == serial)))
        return out

    def lone_with(self, variant: str) -> list[Device]:
        """Devices where a gpu-let serving ``variant`` is alone and the device has room left."""
        return [self.devices[i] for i in sorted(self._lone.get(variant, ()))]

    def take_lost(self) -> dict[str, float]:
        lost, self.lost = self.lost, {}
        return lost

    # --- moves ------------------------------------------------------------------------------

    def open(self, device: Device, size: int, variant: str, want: float, *, keep: float, commit: bool = True,
             cap: int = 0) -> float:
        """A new gpu-let of ``size`` on ``device`` for ``variant``, carrying up to ``want`` rps.
        Returns the rate carried (0.0 when rejected: no fit, memory, or interference costs more
        than ``1 - keep`` of what the new gpu-let would carry alone). ``commit=False`` only
        reports what the move would carry. ``cap``: the largest batch it may run there (0: any)."""
        kind = device.slot.kind
        if size > device.free or len(device.lets) >= device.limit or want <= TINY_RPS:
            return 0.0
        extra = overhead_of(self.overhead, device.slot.device_id, kind)
        if not self._memory_fits(device, extra + self.needs[variant].memory_bytes):
            return 0.0
        caps = {variant: cap} if cap > 0 else {}
        try:
            curve = self.let_curve(variant, kind, Let(self._serial, size, [], caps=caps))
        except UnknownProfile:
            return 0.0
        slo = self.needs[variant].slo_ms
        floor = self.expected_alpha(variant, kind, size, device.slot.capacity - size) if self.reserve else 1.0
        solo = max_single(curve, slo, floor, want)
        if solo <= TINY_RPS:
            return 0.0
        new = Let(self._serial, size, [Item(variant, solo)], alpha=floor, caps=caps)
        if not self._refit(kind, new):
            return 0.0
        lets = [let.copy() for let in device.lets]
        lets.append(new)
        if not self._accept(device, lets, new, variant, solo, keep, commit=commit):
            return 0.0
        if not commit:
            return new.items[0].rate if new.items else 0.0
        self._serial += 1
        self._commit(device, lets, added_memory=extra + self.needs[variant].memory_bytes)
        return new.items[0].rate if new.items else 0.0

    def share(self, device: Device, let_serial: int, variant: str, want: float, *, keep: float, cap: int = 0) -> float:
        """Temporal sharing: add ``variant`` to an existing gpu-let (or raise its rate there when it
        already serves it), carrying up to ``want`` more rps. Returns the extra rate carried.
        ``cap``: the largest batch a variant it adds may run there (0: any)."""
        lets = [let.copy() for let in device.lets]
        target = next(let for let in lets if let.serial == let_serial)
        if cap > 0 and not target.has(variant):
            target.caps[variant] = cap
        extra = self._room(device, target, variant, want)
        if extra <= TINY_RPS:
            return 0.0
        present = next((i for i in target.items if i.variant == variant), None)
        old = present.rate if present is not None else 0.0
        if present is None:
            target.items.append(Item(variant, extra))
            target.items.sort(key=lambda i: i.variant)
        else:
            present.rate += extra
        if not self._refit(device.slot.kind, target):
            return 0.0
        if not self._accept(device, lets, target, variant, extra, keep):
            return 0.0
        self._commit(device, lets, added_memory=0 if present is not None else self.needs[variant].memory_bytes)
        after = sum(i.rate for let in device.lets if let.serial == let_serial for i in let.items if i.variant == variant)
        return after - old

    def widen(self, device: Device, variant: str, want: float) -> float:
        """Merge a residue into the variant's own gpu-let when it is alone on its device: the
        gpu-let takes the rest of the device (no neighbour, so no interference) and up to ``want``
        more rps of ``variant``. Returns the extra rate carried."""
        if len(device.lets) != 1 or device.free <= 0 or want <= TINY_RPS or (device.index, device.lets[0].serial) in self.frozen:
            return 0.0
        kind = device.slot.kind
        wider = device.lets[0].copy()
        present = next((i for i in wider.items if i.variant == variant), None)
        if present is None:
            return 0.0
        wider.size, wider.alpha = device.slot.capacity, 1.0
        extra = self._room(device, wider, variant, want)
        if extra <= TINY_RPS:
            return 0.0
        present.rate += extra
        if not self._refit(kind, wider, allow_loss=False):
            return 0.0
        self._commit(device, [wider], added_memory=0)
        return extra

    def room(self, device: Device, let_serial: int, variant: str) -> float:
        """The extra rate of ``variant`` that gpu-let could take at its current slowdown (no change made)."""
        return self._room(device, next(g for g in device.lets if g.serial == let_serial), variant, float("inf"))

    def _room(self, device: Device, let: Let, variant: str, want: float) -> float:
        kind = device.slot.kind
        current = next((i.rate for i in let.items if i.variant == variant), None)
        if want <= TINY_RPS or (current is None and len(let.items) >= self.max_models):
            return 0.0
        if current is None and not self._memory_fits(device, self.needs[variant].memory_bytes):
            return 0.0
        try:
            curve = self.let_curve(variant, kind, let)
        except UnknownProfile:
            return 0.0
        others = [i for i in let.items if i.variant != variant]
        slo = min([self.needs[variant].slo_ms, *(self.needs[i.variant].slo_ms for i in others)])
        existing = [(self.let_curve(i.variant, kind, let), i.rate) for i in others]
        base = current or 0.0
        return max(0.0, max_extra(existing, slo, curve, let.alpha, base + want) - base)

    def grow_lone(self) -> None:
        """Give a gpu-let alone on its device the rest of the device when that is no slower for any
        variant it serves (more headroom; nothing else can use those units after planning)."""
        for d in self.devices:
            if len(d.lets) != 1 or d.free <= 0 or (d.index, d.lets[0].serial) in self.frozen:
                continue
            let = d.lets[0]
            kind = d.slot.kind
            bigger = let.copy()
            bigger.size = d.slot.capacity
            bigger.alpha = 1.0  # alone: nothing interferes
            try:
                slower = any(self.curve(i.variant, kind, bigger.size)[i.batch - 1] > self.curve(i.variant, kind, let.size)[i.batch - 1] for i in let.items)
            except UnknownProfile:
                continue
            if slower or not self._refit(kind, bigger, allow_loss=False):
                continue
            self._commit(d, [bigger], added_memory=0)

    # --- internals --------------------------------------------------------------------------

    def _memory_fits(self, device: Device, extra: int) -> bool:
        total = device.slot.memory_bytes
        return total <= 0 or device.memory_used + extra <= MEMORY_FRACTION * total

    def _refit(self, kind: str, let: Let, *, allow_loss: bool = True) -> bool:
        """Recompute the cycle of ``let`` at its alpha. If its rates no longer fit, scale them down
        when ``allow_loss`` (the caller accounts for the difference). False when nothing fits."""
        items = [(self.let_curve(i.variant, kind, let), i.rate) for i in let.items]
        slo = min(self.needs[i.variant].slo_ms for i in let.items)
        fit = fit_cycle(items, slo, let.alpha)
        if fit is None:
            if not allow_loss:
                return False
            if len(items) == 1:
                scale = max_single(items[0][0], slo, let.alpha, items[0][1]) / items[0][1]
            else:
                scale = scale_to_fit(items, slo, let.alpha)
            if scale <= 0:
                let.items = []
                return False
            for it in let.items:
                it.rate *= scale
            items = [(c, r * scale) for c, r in items]
            fit = fit_cycle(items, slo, let.alpha)
            if fit is None:
                let.items = []
                return False
        let.duty, batches = fit
        for it, b in zip(let.items, batches, strict=True):
            it.batch = b
        let.load = round_time(items, batches, let.alpha) / let.duty
        return True

    def slowdown(self, kind: str, let: Let, lets: Sequence[Let]) -> float:
        """Predicted alpha of ``let``: per victim variant, 1 + the sum over neighbouring gpu-lets of
        the worst excess among the variants time-sharing that neighbour (only one runs at a time);
        the worst victim decides. With one neighbour this is gpu-let's max-over-co-runners rule;
        summing excesses keeps several CPU neighbours from hiding behind the worst one."""
        if not self.interference.enabled or len(lets) < 2:
            return 1.0
        worst = 1.0
        predict = self.interference.predict
        for it in let.items:
            me = (it.variant, let.size, it.batch)
            excess = 0.0
            for other in lets:
                if other is let or not other.items:
                    continue
                excess += max(0.0, max(predict(kind, me, (o.variant, other.size, o.batch)) for o in other.items) - 1.0)
            worst = max(worst, 1.0 + excess)
        return worst

    def _accept(self, device: Device, lets: list[Let], changed: Let, variant: str, offered: float, keep: float, *, commit: bool = True) -> bool:
        """Raise alphas on ``device`` until they cover the predicted slowdowns (refitting, and
        shedding rate where a cycle no longer fits), then accept if the moved variant's gain minus
        what neighbours lost is at least ``keep`` × ``offered``."""
        kind = device.slot.kind
        before = {(let.serial, i.variant): i.rate for let in device.lets for i in let.items}
        for _ in range(SETTLE_ROUNDS):
            raised = False
            for let in lets:
                if not let.items:
                    continue
                alpha = self.slowdown(kind, let, lets)
                if alpha > let.alpha * (1 + 1e-12):
                    let.alpha = alpha
                    raised = True
                    self._refit(kind, let)
            if not raised:
                break
        else:
            return False
        after = {(let.serial, i.variant): i.rate for let in lets for i in let.items}
        mine = (changed.serial, variant)
        gained = after.get(mine, 0.0) - before.get(mine, 0.0)
        shed: dict[str, float] = {}
        for key, old in before.items():
            drop = old - after.get(key, 0.0)
            if key != mine and drop > TINY_RPS:
                shed[key[1]] = shed.get(key[1], 0.0) + drop
        net = gained - sum(shed.values())
        # A move must carry more than its neighbours lose, whatever ``keep``: one that only takes
        # over what it costs them would be made again and again for the rate handed back.
        if gained <= TINY_RPS or net <= TINY_RPS or net < keep * offered:
            return False
        if not commit:
            return True
        for v, rate in sorted(shed.items()):
            self.lost[v] = self.lost.get(v, 0.0) + rate
        return True

    def _commit(self, device: Device, lets: list[Let], *, added_memory: int) -> None:
        kind = device.slot.kind
        was_whole = not device.lets
        old_free = device.free
        self._unindex(device)
        device.lets = [let for let in lets if let.items]
        device.free = device.slot.capacity - sum(let.size for let in device.lets)
        device.memory_used += added_memory
        if was_whole:
            spots = self._whole[kind]
            del spots[bisect.bisect_left(spots, (device.slot.capacity, device.index))]
        else:
            spots = self._partial[kind]
            at = bisect.bisect_left(spots, (old_free, device.index))
            if at < len(spots) and spots[at] == (old_free, device.index):
                del spots[at]
        if not device.lets:
            bisect.insort(self._whole[kind], (device.slot.capacity, device.index))
        elif device.free > 0 and len(device.lets) < device.limit:
            bisect.insort(self._partial[kind], (device.free, device.index))
        self._index(device)

    def _index(self, device: Device) -> None:
        for let in device.lets:
            if let.load < 1 - 1e-9:
                self._open[device.slot.kind].add((device.index, let.serial))
        if len(device.lets) == 1 and device.free > 0:
            for i in device.lets[0].items:
                self._lone.setdefault(i.variant, set()).add(device.index)

    def _unindex(self, device: Device) -> None:
        for let in device.lets:
            self._open[device.slot.kind].discard((device.index, let.serial))
            for i in let.items:
                self._lone.get(i.variant, set()).discard(device.index)
