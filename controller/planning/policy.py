"""The planning policies as drivers over a Fleet: which pieces of load go where, in what order.

"gpulet": per variant, saturated gpu-lets at its most efficient partition, then a residue
gpu-let at the smallest partition that carries the rest under its predicted slowdown; best-fit
packing that prefers an exact free half, then splitting a whole device, then the tightest larger
half; fallbacks are temporal sharing and any free partition. Greedy packing is order-sensitive,
so the policy tries a few packings of the same rules (denser packing, residues shared first,
room reserved for the worst neighbour, and 100 % gpu-lets only) and plan() keeps the one that
carries the most. "temporal": whole devices, saturated ones per variant, residues packed by
squishy bin packing. "whole": one variant per whole device. Private to the package.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from controller.planning.fleet import MAX_ATTEMPTS, TINY_RPS, Device, Fleet


@dataclass(frozen=True, slots=True)
class Serving:
    """A gpu-let serving now (see :func:`retain`): its worker runs each variant at most at the
    batch in ``batches`` (a variant not named there: any)."""

    device_id: str
    size: int
    variants: tuple[str, ...]
    batches: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Packing:
    """One way to pack: the policy's rules plus the order knobs of the greedy gpu-let packer."""

    name: str
    rules: str  # "gpulet" | "temporal" | "whole"
    whole_first: bool = True  # split an untouched device before filling a larger free half
    share_first: bool = False  # try temporal sharing for a residue before a gpu-let of its own
    reserve: bool = False  # size new gpu-lets for the worst neighbour they could get


PACKINGS = {
    p.name: p
    for p in (
        Packing("gpulet", "gpulet"),
        Packing("gpulet-dense", "gpulet", whole_first=False),
        Packing("gpulet-share", "gpulet", share_first=True),
        Packing("gpulet-share-reserve", "gpulet", share_first=True, reserve=True),
        Packing("temporal", "temporal"),
        Packing("whole", "whole"),
    )
}
POLICIES = ("gpulet", "temporal", "whole")
STRATEGIES = {  # what plan() tries per policy, in order; it keeps the candidate that carries the most
    "gpulet": ("gpulet", "gpulet-dense", "gpulet-share", "gpulet-share-reserve", "temporal"),
    "temporal": ("temporal",),
    "whole": ("whole",),
}
KNEE_GAIN = 1.05  # growing a partition must add at least 5 % throughput to count as efficient
FALLBACK_ROUNDS = 3
SHARE_ATTEMPTS = 16


def run_strategy(
    strategy: str,
    fleet: Fleet,
    remaining: MutableMapping[str, float],
    menus: Mapping[str, tuple[int, ...]],
    *,
    min_residual_rps: float,
    keep: float,
) -> None:
    """Place as much of ``remaining`` (variant -> rps) as the packing can; leaves the rest in it."""
    packing = PACKINGS[strategy]
    if packing.rules == "gpulet":
        fleet.reserve = packing.reserve
        _gpulet(fleet, remaining, menus, min_residual_rps, keep, share_first=packing.share_first, whole_first=packing.whole_first)
    elif packing.rules == "temporal":
        _temporal(fleet, remaining, min_residual_rps)
    else:
        _whole(fleet, remaining, min_residual_rps)


# --- sizing -------------------------------------------------------------------------------------


def knee(fleet: Fleet, variant: str, kind: str, menu: tuple[int, ...]) -> tuple[int, float]:
    """gpu-let's max-efficient partition: over consecutive menu sizes, the larger of the pair with
    the highest marginal throughput per unit, counting only pairs that add >= 5 %. Defaults to
    the smallest size that meets the SLO. Interference-aware: when two such partitions side by
    side (this one and the rest of the device, each slowed by the other as predicted) carry less
    than the whole device, the whole device is the efficient size. (size, saturated rate);
    (0, 0.0) if no size meets the SLO."""
    rates = [(p, fleet.solo_rate(variant, kind, p)) for p in menu]
    usable = [(p, t) for p, t in rates if t > TINY_RPS]
    if not usable:
        return 0, 0.0
    best, best_gain = usable[0], 0.0
    for (lo, tl), (hi, th) in itertools.pairwise(rates):
        if th <= TINY_RPS or (tl > TINY_RPS and th < KNEE_GAIN * tl):
            continue
        gain = (th - tl) / (hi - lo)
        if gain > best_gain:
            best_gain, best = gain, (hi, th)
    cap = fleet.capacity(kind)
    whole = dict(rates).get(cap, 0.0)
    if best[0] < cap and whole > TINY_RPS and whole >= _paired_rate(fleet, variant, kind, best[0], cap - best[0]):
        return cap, whole
    return best


def _paired_rate(fleet: Fleet, variant: str, kind: str, size: int, rest: int) -> float:
    """Saturated rate of ``variant`` on two partitions ``size`` and ``rest`` of one device, each
    slowed as if the most aggressive demanded variant ran next to it."""
    a1 = fleet.expected_alpha(variant, kind, size, rest)
    a2 = fleet.expected_alpha(variant, kind, rest, size)
    return fleet.solo_rate(variant, kind, size, a1) + fleet.solo_rate(variant, kind, rest, a2)


def residue_size(fleet: Fleet, variant: str, kind: str, menu: tuple[int, ...], rate: float, upto: int) -> int:
    """Smallest menu size up to ``upto`` that carries ``rate`` alone under the slowdown a
    neighbour in the rest of the device would likely cause; ``upto`` if none does."""
    cap = fleet.capacity(kind)
    for p in menu:
        if p > upto:
            break
        alpha = fleet.expected_alpha(variant, kind, p, cap - p)
        if fleet.solo_rate(variant, kind, p, alpha) >= rate:
            return p
    return upto


def _ranked(fleet: Fleet, variant: str, rate: float, menus: Mapping[str, tuple[int, ...]], whole: bool) -> list[tuple[str, int, float]]:
    """Device kinds for a variant, cheapest first (share of a device its demand needs):
    (kind, piece size, saturated rate of a piece)."""
    ranked = []
    for kind in fleet.kinds():
        cap = fleet.capacity(kind)
        size, sat = (cap, fleet.solo_rate(variant, kind, cap)) if whole else knee(fleet, variant, kind, menus[kind])
        if sat > TINY_RPS:
            ranked.append((max(rate, 1.0) * size / (sat * cap), kind, size, sat))
    ranked.sort()
    return [(kind, size, sat) for _, kind, size, sat in ranked]


def _absorb(fleet: Fleet, remaining: MutableMapping[str, float]) -> None:
    for v, rate in fleet.take_lost().items():
        remaining[v] = remaining.get(v, 0.0) + rate


# --- gpulet -------------------------------------------------------------------------------------


def _slots(fleet: Fleet, kind: str, size: int, *, whole_first: bool = True) -> list[tuple[int, int]]:
    """Best-fit order for a new gpu-let of ``size``, as (device index, size it would get): partly
    used devices with exactly that much free, then (``whole_first``, gpu-let's preference) a whole
    device split to ``size`` before partly used devices with the least room above it, or the
    other way round (denser packing). On a CUDA device the second gpu-let takes all that is left.
    Bounded to a few interference-checked candidates."""
    cuda = kind.startswith("cuda")
    partial = fleet.partial_free(kind)
    exact: list[tuple[int, int]] = []
    start = bisect.bisect_left(partial, (size, -1))
    for free, index in partial[start:start + MAX_ATTEMPTS]:
        if free != size:
            break
        exact.append((index, size))
    whole = fleet.whole_free(kind)
    at = bisect.bisect_left(whole, (size, -1))
    split = [(whole[at][1], size)] if at < len(whole) else []
    start = bisect.bisect_right(partial, (size, len(fleet.devices)))
    larger = [(index, free if cuda else size) for free, index in partial[start:start + max(1, MAX_ATTEMPTS - len(exact))]]
    return exact + split + larger if whole_first else exact + larger + split


def place_piece(fleet: Fleet, variant: str, kind: str, size: int, want: float, keep: float, *, whole_first: bool = True) -> float:
    """A gpu-let of ``size`` for ``variant`` in the first best-fit slot that accepts it."""
    for index, let_size in _slots(fleet, kind, size, whole_first=whole_first):
        carried = fleet.open(fleet.devices[index], let_size, variant, want, keep=keep)
        if carried > TINY_RPS:
            return carried
    return 0.0


def place_residue(
    fleet: Fleet, variant: str, kind: str, menu: tuple[int, ...], want: float, upto: int, keep: float, *, whole_first: bool = True
) -> float:
    """The smallest gpu-let that carries all of ``want`` where it would actually land, predicted
    slowdown included (trying sizes from :func:`residue_size` up to ``upto``); if none carries
    it all, the one that carries the most."""
    first = residue_size(fleet, variant, kind, menu, want, upto)
    best: tuple[float, int, int] | None = None
    for size in (p for p in menu if first <= p <= upto):
        for index, let_size in _slots(fleet, kind, size, whole_first=whole_first):
            carried = fleet.open(fleet.devices[index], let_size, variant, want, keep=keep, commit=False)
            if carried <= TINY_RPS:
                continue
            if carried >= want * (1 - 1e-9):
                return fleet.open(fleet.devices[index], let_size, variant, want, keep=keep)
            if best is None or carried > best[0] * (1 + 1e-9):
                best = (carried, index, let_size)
            break
    if best is None:
        return 0.0
    return fleet.open(fleet.devices[best[1]], best[2], variant, want, keep=keep)


def place_anywhere(fleet: Fleet, variant: str, kind: str, menu: tuple[int, ...], want: float, keep: float) -> float:
    """Last resort for new gpu-lets: any partly used device, most free room first."""
    partial = fleet.partial_free(kind)
    for free, index in sorted(partial, key=lambda s: (-s[0], s[1]))[:MAX_ATTEMPTS]:
        size = free if kind.startswith("cuda") else residue_size(fleet, variant, kind, tuple(p for p in menu if p <= free) or (free,), want, free)
        carried = fleet.open(fleet.devices[index], size, variant, want, keep=keep)
        if carried > TINY_RPS:
            return carried
    return 0.0


def widen_own(fleet: Fleet, variant: str, kind: str, want: float) -> float:
    """Grow the variant's own gpu-lets that sit alone on a device into the rest of it."""
    carried = 0.0
    for device in fleet.lone_with(variant):
        if device.slot.kind != kind:
            continue
        if want - carried <= TINY_RPS:
            break
        carried += fleet.widen(device, variant, want - carried)
    return carried


def share_into(fleet: Fleet, variant: str, kind: str, want: float, keep: float) -> float:
    """Temporal sharing: fold ``variant`` into existing gpu-lets of ``kind`` with idle cycle time,
    its own first, then the busiest."""
    candidates = []
    limit = fleet.max_models
    for device, let in fleet.open_lets(kind):
        mine = let.has(variant)
        if mine or (len(let.items) < limit and (device.index, let.serial) not in fleet.frozen):
            candidates.append((not mine, -let.load, device.index, let.serial))
    candidates.sort()
    carried_total = 0.0
    for _, _, index, serial in candidates[:SHARE_ATTEMPTS]:
        if want - carried_total <= TINY_RPS:
            break
        carried_total += fleet.share(fleet.devices[index], serial, variant, want - carried_total, keep=keep)
    return carried_total


def _gpulet(
    fleet: Fleet, remaining: MutableMapping[str, float], menus, min_residual: float, keep: float, *, share_first: bool, whole_first: bool
) -> None:
    ranked = {v: _ranked(fleet, v, r, menus, whole=False) for v, r in remaining.items() if r > TINY_RPS}
    order = sorted(ranked, key=lambda v: (-_need(ranked[v], remaining[v]), v))
    # 1. saturated gpu-lets at each variant's most efficient size
    for v in order:
        if not ranked[v]:
            continue
        kind, size, sat = ranked[v][0]
        while remaining[v] >= sat * (1 - 1e-9):
            carried = place_piece(fleet, v, kind, size, sat, keep, whole_first=whole_first)
            if carried <= TINY_RPS:
                break
            remaining[v] -= carried
            _absorb(fleet, remaining)
    # 2. residues, largest first: a gpu-let of their own (after temporal sharing when share_first)
    for v in sorted(order, key=lambda u: (-remaining[u], u)):
        if not ranked[v] or remaining[v] <= TINY_RPS:
            continue
        kind, size, _ = ranked[v][0]
        if share_first or remaining[v] <= min_residual:
            remaining[v] -= share_into(fleet, v, kind, remaining[v], keep)
            _absorb(fleet, remaining)
        for _ in range(3):
            if remaining[v] <= max(min_residual, TINY_RPS):
                break
            carried = place_residue(fleet, v, kind, menus[kind], remaining[v], size, keep, whole_first=whole_first)
            if carried <= TINY_RPS:
                break
            remaining[v] -= carried
            _absorb(fleet, remaining)
    # 3. whatever is left (no room at the preferred size, rate lost to interference, other kinds)
    for _ in range(FALLBACK_ROUNDS):
        pending = [v for v in order if remaining[v] > TINY_RPS and ranked[v]]
        if not pending:
            break
        for v in sorted(pending, key=lambda u: (-remaining[u], u)):
            for kind, size, sat in ranked[v]:
                remaining[v] -= share_into(fleet, v, kind, remaining[v], keep)
                _absorb(fleet, remaining)
                while remaining[v] > max(min_residual, TINY_RPS):
                    if remaining[v] >= sat:
                        carried = place_piece(fleet, v, kind, size, remaining[v], keep, whole_first=whole_first)
                    else:
                        carried = place_residue(fleet, v, kind, menus[kind], remaining[v], size, keep, whole_first=whole_first)
                    if carried <= TINY_RPS:
                        carried = place_anywhere(fleet, v, kind, menus[kind], remaining[v], keep=0.0)
                    if carried <= TINY_RPS:
                        break
                    remaining[v] -= carried
                    _absorb(fleet, remaining)
                if remaining[v] > TINY_RPS:  # last resort: the variant's own lone gpu-lets take their whole device
                    remaining[v] -= widen_own(fleet, v, kind, remaining[v])
                if remaining[v] <= TINY_RPS:
                    break
    fleet.grow_lone()


def retain(fleet: Fleet, remaining: MutableMapping[str, float], lets: Sequence[Serving], keep: float) -> None:
    """Re-create the gpu-lets serving now and give them the demand of the variants they host:
    first an even share of each variant's demand per gpu-let hosting it (so every one keeps its
    variants), then as much of the rest as each takes, each variant at most at the batch its
    worker runs. What they cannot carry (or variants they do not host) is left in ``remaining``
    for a packing to place on the free room. Interference and SLO checks are those of any other
    move, so a gpu-let the model no longer accepts beside its neighbours is not re-created."""
    by_id = {d.slot.device_id: d for d in fleet.devices}
    hosted: dict[str, int] = {}
    for s in lets:
        for v in set(s.variants):
            hosted[v] = hosted.get(v, 0) + 1
    even = {v: remaining.get(v, 0.0) / n for v, n in hosted.items()}
    made: list[tuple[Device, int, list[str], dict[str, int]]] = []
    for s in sorted(lets, key=lambda s: (s.device_id, -s.size, sorted(s.variants), sorted(s.batches))):
        device = by_id.get(s.device_id)
        names = sorted(v for v in set(s.variants) if remaining.get(v, 0.0) > TINY_RPS)
        if device is None or not names:
            continue
        caps = dict(s.batches)
        serial: int | None = None
        for v in names:
            want = min(even[v], remaining[v])
            if serial is None:
                before = {let.serial for let in device.lets}
                carried = fleet.open(device, s.size, v, want, keep=keep, cap=caps.get(v, 0))
                serial = next((let.serial for let in device.lets if let.serial not in before), None)
            else:
                carried = fleet.share(device, serial, v, want, keep=keep, cap=caps.get(v, 0))
            remaining[v] -= carried
            _absorb(fleet, remaining)
        if serial is not None:
            made.append((device, serial, names, caps))
    for device, serial, names, caps in made:
        for v in names:
            if remaining[v] > TINY_RPS and any(let.serial == serial for let in device.lets):
                remaining[v] -= fleet.share(device, serial, v, remaining[v], keep=keep, cap=caps.get(v, 0))
                _absorb(fleet, remaining)
    # What the packing does next must not change them: a variant folded into one, or one widened
    # into its device, is a new shape, and its worker would be restarted after all.
    fleet.frozen.update((device.index, serial) for device, serial, _, _ in made)


def _need(ranked: list[tuple[str, int, float]], rate: float) -> float:
    if not ranked:
        return 0.0
    _, size, sat = ranked[0]
    return rate / sat * size


# --- baselines ----------------------------------------------------------------------------------


def _take_whole(fleet: Fleet, kind: str) -> Device | None:
    """The lowest-numbered untouched device among the largest of ``kind``."""
    spots = fleet.whole_free(kind)
    if not spots:
        return None
    at = bisect.bisect_left(spots, (spots[-1][0], -1))
    return fleet.devices[spots[at][1]]


def _open_whole(fleet: Fleet, variant: str, ranked: list[tuple[str, int, float]], want: float) -> float:
    for kind, _, _ in ranked:
        device = _take_whole(fleet, kind)
        if device is not None:
            carried = fleet.open(device, device.slot.capacity, variant, want, keep=0.0)
            if carried > TINY_RPS:
                return carried
    return 0.0


def _temporal(fleet: Fleet, remaining: MutableMapping[str, float], min_residual: float) -> None:
    ranked = {v: _ranked(fleet, v, r, {}, whole=True) for v, r in remaining.items() if r > TINY_RPS}
    order = sorted(ranked, key=lambda v: (-_need(ranked[v], remaining[v]), v))
    for v in order:  # saturated whole devices
        if not ranked[v]:
            continue
        sat = ranked[v][0][2]
        while remaining[v] >= sat * (1 - 1e-9):
            carried = _open_whole(fleet, v, ranked[v], sat)
            if carried <= TINY_RPS:
                break
            remaining[v] -= carried
    # residues: largest occupancy first, into the busiest device where all of it fits, else a new
    # device, else wherever a part of it fits
    residues = [v for v in order if ranked[v] and remaining[v] > TINY_RPS]
    residues.sort(key=lambda v: (-remaining[v] / ranked[v][0][2], v))
    for v in residues:
        for kind, _, _ in ranked[v]:
            if remaining[v] <= TINY_RPS:
                break
            remaining[v] -= _share_whole_fit(fleet, v, kind, remaining[v])
        if remaining[v] > max(min_residual, TINY_RPS):
            remaining[v] -= _open_whole(fleet, v, ranked[v], remaining[v])
        for kind, _, _ in ranked[v]:
            if remaining[v] > TINY_RPS:
                remaining[v] -= share_into(fleet, v, kind, remaining[v], 0.0)


def _share_whole_fit(fleet: Fleet, variant: str, kind: str, want: float) -> float:
    """Squishy bin packing's best fit: the busiest shared device that takes all of ``want``."""
    candidates = []
    for device, let in fleet.open_lets(kind):
        if len(let.items) < fleet.max_models or let.has(variant):
            candidates.append((-let.load, device.index, let.serial))
    for _, index, serial in sorted(candidates)[:4 * SHARE_ATTEMPTS]:
        if fleet.room(fleet.devices[index], serial, variant) >= want * (1 - 1e-9):
            return fleet.share(fleet.devices[index], serial, variant, want, keep=0.0)
    return 0.0


def _whole(fleet: Fleet, remaining: MutableMapping[str, float], min_residual: float) -> None:
    ranked = {v: _ranked(fleet, v, r, {}, whole=True) for v, r in remaining.items() if r > TINY_RPS}
    for v in sorted(ranked, key=lambda u: (-_need(ranked[u], remaining[u]), u)):
        while ranked[v] and remaining[v] > max(min_residual, TINY_RPS):
            carried = _open_whole(fleet, v, ranked[v], remaining[v])
            if carried <= TINY_RPS:
                break
            remaining[v] -= carried
