"""Interference model: the slowdown a partition suffers from what shares its device.

gpu-let's linear model, refitted per device kind by least squares from measured co-locations:
``alpha = c0 + w_me . f(me) + w_other . f(other)``, clamped to alpha >= 1, where ``f`` maps a
(device kind, variant, partition, batch) to a feature vector (utilisation counters when measured,
a latency-derived proxy otherwise). Pure numpy; imports only the planning profile module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.planning.profile import ProfileTable

FeatureMap = Callable[[str, str, int, int], Sequence[float]]
"""(device_kind, variant, partition, batch) -> features of that partition running solo."""

Workload = tuple[str, int, int]
"""(variant, partition, batch) of one side of a co-location."""


@dataclass(frozen=True, slots=True)
class CoLocation:
    """One measurement: ``a`` ran next to ``b`` on one device; ``slowdown`` = latency shared / solo of ``a``."""

    device_kind: str
    a: Workload
    b: Workload
    slowdown: float


def latency_features(table: ProfileTable) -> FeatureMap:
    """The feature map used when no utilisation counters exist: for a partition, its share of the
    device (partition / the kind's largest profiled partition) and that share weighted by how hard
    the variant drives it (solo throughput at this partition and batch over the variant's best
    throughput anywhere in the table, in (0, 1])."""
    full: dict[str, int] = {}
    peak: dict[tuple[str, str], float] = {}

    def features(device_kind: str, variant: str, partition: int, batch: int) -> tuple[float, float]:
        top = full.get(device_kind)
        if top is None:
            top = full[device_kind] = max(table.partitions(device_kind))
        best = peak.get((variant, device_kind))
        if best is None:
            best = max(
                1000.0 * b / table.latency_ms(variant, device_kind, p, b, quantile="p50")
                for p in table.partitions(device_kind, variant)
                for b in table.batches(variant, device_kind)
            )
            peak[(variant, device_kind)] = best
        share = partition / top
        rate = 1000.0 * batch / table.latency_ms(variant, device_kind, partition, batch, quantile="p50")
        return (share, share * min(1.0, rate / best))

    return features


def _raw_features(device_kind: str, variant: str, partition: int, batch: int) -> tuple[float, float]:
    return (float(partition), math.log2(batch) + 1.0)


class InterferenceModel:
    """Predicts slowdown alpha >= 1 of workload ``a`` when ``b`` runs in another partition of the same device.

    Immutable apart from a private memo of predictions; not for concurrent use from several
    threads. A device kind without fitted coefficients predicts ``unknown_kind`` (1.0 by default).
    """

    __slots__ = ("_cache", "_coef", "_features", "_unknown")

    def __init__(
        self,
        coefficients: Mapping[str, Sequence[float]],
        features: FeatureMap | None = None,
        *,
        unknown_kind: float = 1.0,
    ) -> None:
        self._coef = {kind: np.asarray(c, dtype=float) for kind, c in sorted(coefficients.items())}
        if self._coef and features is None:
            raise ValueError("coefficients need the feature map they were fitted with")
        self._features = features
        self._unknown = max(1.0, float(unknown_kind))
        self._cache: dict[tuple[str, Workload, Workload], float] = {}

    @classmethod
    def none(cls) -> InterferenceModel:
        """No interference: every prediction is 1.0 (the "noint" comparison)."""
        return cls({})

    @classmethod
    def fit(
        cls,
        samples: Sequence[CoLocation],
        features: FeatureMap | None = None,
        *,
        table: ProfileTable | None = None,
    ) -> InterferenceModel:
        """Least-squares fit per device kind. Without ``features``, uses :func:`latency_features` of
        ``table``, or raw (partition, log2 batch) when there is no table either. When every sample
        splits a device into complementary shares, share features are collinear with the
        intercept; the minimum-norm solution is returned and predicts just as well."""
        fmap = features or (latency_features(table) if table is not None else _raw_features)
        by_kind: dict[str, list[CoLocation]] = {}
        for s in samples:
            if not (s.slowdown > 0 and math.isfinite(s.slowdown)):
                raise ValueError(f"a measured slowdown must be positive and finite: {s}")
            by_kind.setdefault(s.device_kind, []).append(s)
        coefficients = {}
        for kind, rows in sorted(by_kind.items()):
            x = np.array([_design_row(fmap, kind, r.a, r.b) for r in rows], dtype=float)
            y = np.array([r.slowdown for r in rows], dtype=float)
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            coefficients[kind] = tuple(float(c) for c in coef)
        return cls(coefficients, fmap)

    @property
    def enabled(self) -> bool:
        return bool(self._coef)

    @property
    def coefficients(self) -> dict[str, tuple[float, ...]]:
        """Per device kind: intercept, then the weights of ``f(me)``, then those of ``f(other)``."""
        return {kind: tuple(float(v) for v in c) for kind, c in self._coef.items()}

    def predict(self, device_kind: str, a: Workload, b: Workload) -> float:
        coef = self._coef.get(device_kind)
        if coef is None:
            return self._unknown
        key = (device_kind, a, b)
        found = self._cache.get(key)
        if found is None:
            row = np.asarray(_design_row(self._features, device_kind, a, b), dtype=float)
            if row.shape != coef.shape:
                raise ValueError(f"feature map gives {row.size - 1} values; the fit used {coef.size - 1}")
            found = self._cache[key] = max(1.0, float(row @ coef))
        return found

    def pressure(self, device_kind: str, b: Workload) -> float:
        """What ``b`` adds to any co-runner's predicted slowdown before the clamp at 1: the model is
        linear, so this ranks neighbours the same for every victim (0 for a kind without a fit)."""
        coef = self._coef.get(device_kind)
        if coef is None:
            return 0.0
        mine = np.asarray([float(x) for x in self._features(device_kind, *b)], dtype=float)
        return float(coef[coef.size - mine.size:] @ mine)

    def error(self, held_out: Sequence[CoLocation]) -> dict[str, float]:
        """Prediction error on measurements not used in the fit: mean and max absolute error of
        alpha, mean relative error, RMSE and the sample count."""
        if not held_out:
            return {"n": 0, "mae": 0.0, "max_abs": 0.0, "mean_rel": 0.0, "rmse": 0.0}
        pred = np.array([self.predict(s.device_kind, s.a, s.b) for s in held_out])
        true = np.array([s.slowdown for s in held_out])
        err = np.abs(pred - true)
        return {
            "n": len(held_out),
            "mae": float(err.mean()),
            "max_abs": float(err.max()),
            "mean_rel": float((err / true).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
        }


def _design_row(fmap: FeatureMap, kind: str, a: Workload, b: Workload) -> list[float]:
    return [1.0, *map(float, fmap(kind, *a)), *map(float, fmap(kind, *b))]
