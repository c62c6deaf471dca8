"""What a routing table means to the request path, worked out once when the table changes.

:class:`RoutingView` holds the models, families, the live (non-draining) workers of each
variant with the plan's weights, and the workers' latency curves; the request path only looks
things up in it. :class:`WorkerPicker` chooses the worker for one request: smooth weighted
round robin (nginx's rule) over the plan's weights, skipping workers that already hold
clearly more requests than the least loaded one. At light load the split follows the plan and
equal replicas take turns; under load, backed-up workers are passed over. Both are pure:
liveness and in-flight counts come in as functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mesh.latency import LatencyCurve, warmup_batches
from protocol.message import RoutingTable
from protocol.types import ModelInfo, WorkerRoute, request_rows


@dataclass(frozen=True, slots=True)
class Route:
    worker_id: str
    weight: float


class RoutingView:
    """An immutable reading of one RoutingTable (an empty one before the first arrives)."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self.version = table.version if table else 0
        self.received = table is not None
        models = table.models if table else ()
        self.models: dict[str, ModelInfo] = {m.name: m for m in models}
        families: dict[str, list[ModelInfo]] = {}
        for m in models:
            families.setdefault(m.family, []).append(m)
        self.families = {f: sorted(ms, key=lambda m: -m.accuracy) for f, ms in families.items()}
        self.family_fractions = {f: dict(v) for f, v in (table.family_fractions if table else {}).items()}
        self.shed = dict(table.shed) if table else {}
        self.unavailable = dict(table.unavailable) if table else {}
        self.workers: dict[str, WorkerRoute] = {r.worker_id: r for r in (table.workers if table else ())}
        by_variant: dict[str, list[Route]] = {}
        curves: dict[tuple[str, str], LatencyCurve] = {}
        for route in self.workers.values():
            for variant, latencies in route.latency_ms.items():
                model = self.models.get(variant)
                if model is None:
                    continue
                # A plan may run a variant at a smaller batch than its model's: the worker then
                # measured the sizes up to that one. Without them this curve was dropped, and with
                # it the admission check: every request queued into a 504 instead of a quick 503.
                sizes = warmup_batches(route.max_batch.get(variant, model.max_batch))
                if len(sizes) == len(latencies):
                    curves[(route.worker_id, variant)] = LatencyCurve(sizes, latencies)
            if route.draining:
                continue  # finishes what it has; takes nothing new
            for variant in route.variants:
                weight = route.weights.get(variant, route.weight)
                if weight > 0:
                    by_variant.setdefault(variant, []).append(Route(route.worker_id, weight))
        self.by_variant: dict[str, tuple[Route, ...]] = {v: tuple(r) for v, r in by_variant.items()}
        self.curves = curves

    def routes(self, variant: str) -> tuple[Route, ...]:
        return self.by_variant.get(variant, ())

    def rows(self, variant: str, inputs: Mapping[str, np.ndarray]) -> int:
        """The rows (samples) a request of ``variant`` brings to a batch: the batch dimension of
        its first batched input (1 when none has one, as a worker counts them)."""
        model = self.models.get(variant)
        if model is None:  # not in the table (yet): its first input's leading dimension
            first = next(iter(inputs.values()), None)
            return int(first.shape[0]) if first is not None and first.ndim else 1
        return request_rows(model.inputs, [inputs[s.name].shape if s.name in inputs else () for s in model.inputs])

    def variants_of(self, worker_id: str) -> tuple[str, ...]:
        route = self.workers.get(worker_id)
        return route.variants if route else ()


class WorkerPicker:
    """Smooth weighted round robin among the workers not backed up. State: one credit per worker."""

    def __init__(self, slack: int = 2) -> None:
        # A worker holding more than ``slack`` requests beyond the least loaded candidate is
        # passed over, whatever its weight: its queue says it is slower than the plan thinks.
        self.slack = slack
        self._credit: dict[str, float] = {}

    def pick(
        self,
        routes: tuple[Route, ...],
        alive: Callable[[str], bool],
        outstanding: Callable[[str], int],
        exclude: str | None = None,
    ) -> str | None:
        live = [r for r in routes if r.worker_id != exclude and alive(r.worker_id)]
        if not live:
            return None
        if len(live) == 1:
            return live[0].worker_id
        loads = [outstanding(r.worker_id) for r in live]
        floor = min(loads) + self.slack
        eligible = [r for r, n in zip(live, loads) if n <= floor]
        total = sum(r.weight for r in eligible)
        best: Route | None = None
        best_credit = 0.0
        for r in eligible:
            credit = self._credit.get(r.worker_id, 0.0) + r.weight
            self._credit[r.worker_id] = credit
            if best is None or credit > best_credit:
                best, best_credit = r, credit
        assert best is not None
        self._credit[best.worker_id] = best_credit - total
        return best.worker_id

    def forget(self, keep: Mapping[str, object]) -> None:
        """Drop the credit of workers no longer routed to."""
        self._credit = {w: c for w, c in self._credit.items() if w in keep}
