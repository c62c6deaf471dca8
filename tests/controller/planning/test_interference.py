"""The linear interference model: fit recovers known coefficients, reports held-out error, clamps."""

from __future__ import annotations

import numpy as np
import pytest

from controller.planning import (
    CoLocation,
    InterferenceModel,
    ProfilePoint,
    ProfileTable,
    latency_features,
)

VARIANTS = ("a", "b", "c", "d")
INTENSITY = {"a": 0.2, "b": 0.5, "c": 0.8, "d": 0.35}
TRUE = {"cuda": (0.95, 0.10, 0.05, 0.30, 0.20), "cpu": (1.0, 0.02, 0.0, 0.6, 0.4)}  # c0, w_me, w_other


def features(kind: str, variant: str, partition: int, batch: int) -> tuple[float, float]:
    share = partition / (100 if kind == "cuda" else 4)
    return (share, share * INTENSITY[variant] * np.log2(2 * batch) / 6)


def truth(kind: str, a: tuple[str, int, int], b: tuple[str, int, int]) -> float:
    c = TRUE[kind]
    fa, fb = features(kind, *a), features(kind, *b)
    return c[0] + c[1] * fa[0] + c[2] * fa[1] + c[3] * fb[0] + c[4] * fb[1]


def samples(kind: str, n: int, seed: int, noise: float, *, complementary: bool = False) -> list[CoLocation]:
    """Measurements drawn from ``truth``. Partition pairs are independent (a device need not be
    full), unless ``complementary``: then shares always sum to the whole device."""
    rng = np.random.default_rng(seed)
    parts = (20, 40, 50, 60, 80) if kind == "cuda" else (1, 2, 3)
    full = 100 if kind == "cuda" else 4
    out = []
    for _ in range(n):
        va, vb = rng.choice(VARIANTS, size=2)
        pa, pb = (int(p) for p in rng.choice(parts, size=2))
        if complementary:
            pb = full - pa
        a = (str(va), pa, int(rng.choice((1, 2, 4, 8, 16, 32))))
        b = (str(vb), pb, int(rng.choice((1, 2, 4, 8, 16, 32))))
        out.append(CoLocation(kind, a, b, truth(kind, a, b) + noise * float(rng.standard_normal())))
    return out


def test_fit_recovers_known_coefficients_per_device_kind() -> None:
    model = InterferenceModel.fit(samples("cuda", 200, 1, 0.0) + samples("cpu", 200, 2, 0.0), features)
    for kind, coef in TRUE.items():
        assert model.coefficients[kind] == pytest.approx(coef, abs=1e-6)


def test_noisy_fit_is_close_and_reports_its_held_out_error() -> None:
    train, held = samples("cuda", 300, 3, 0.01), samples("cuda", 100, 4, 0.01)
    model = InterferenceModel.fit(train, features)
    assert model.coefficients["cuda"] == pytest.approx(TRUE["cuda"], abs=0.05)
    err = model.error(held)
    assert set(err) == {"n", "mae", "max_abs", "mean_rel", "rmse"}
    assert err["n"] == 100
    assert 0.0 < err["mae"] < 0.02  # about the noise level (0.01 sd -> MAE ~0.008)
    assert err["mae"] <= err["rmse"] <= err["max_abs"]
    # a model without interference is further off on the same data
    assert InterferenceModel.none().error(held)["mae"] > 5 * err["mae"]


def test_complementary_partitions_still_predict_exactly() -> None:
    # shares that always sum to one are collinear with the intercept: coefficients are not
    # identifiable, but the minimum-norm fit predicts as well as the truth
    train, held = samples("cuda", 200, 6, 0.0, complementary=True), samples("cuda", 50, 7, 0.0, complementary=True)
    assert InterferenceModel.fit(train, features).error(held)["max_abs"] < 1e-9


def test_predictions_are_clamped_at_one_and_unknown_kinds_predict_no_slowdown() -> None:
    model = InterferenceModel({"cuda": (0.5, 0.0, 0.0, 0.0, 0.0)}, features)  # would predict 0.5
    assert model.predict("cuda", ("a", 50, 1), ("b", 50, 1)) == 1.0
    assert model.predict("tpu", ("a", 50, 1), ("b", 50, 1)) == 1.0
    assert InterferenceModel({}, unknown_kind=1.2).predict("tpu", ("a", 1, 1), ("b", 1, 1)) == 1.2


def test_none_model_is_disabled_and_always_one() -> None:
    none = InterferenceModel.none()
    assert not none.enabled
    assert none.predict("cuda", ("a", 20, 32), ("c", 80, 32)) == 1.0
    assert none.error([]) == {"n": 0, "mae": 0.0, "max_abs": 0.0, "mean_rel": 0.0, "rmse": 0.0}


def test_bigger_or_busier_neighbour_slows_more() -> None:
    model = InterferenceModel.fit(samples("cuda", 200, 5, 0.0), features)
    small = model.predict("cuda", ("a", 60, 8), ("c", 20, 8))
    large = model.predict("cuda", ("a", 20, 8), ("c", 80, 8))
    calm = model.predict("cuda", ("a", 50, 8), ("a", 50, 8))
    busy = model.predict("cuda", ("a", 50, 8), ("c", 50, 8))
    assert 1.0 <= small < large
    assert calm < busy


def test_coefficients_without_their_feature_map_are_rejected() -> None:
    with pytest.raises(ValueError):
        InterferenceModel({"cuda": (1.0, 0.0, 0.0)})
    model = InterferenceModel({"cuda": (1.0, 0.1, 0.2)}, lambda k, v, p, b: (p / 100,))
    with pytest.raises(ValueError):
        InterferenceModel({"cuda": (1.0, 0.1)}, lambda k, v, p, b: (p / 100,)).predict("cuda", ("a", 50, 1), ("b", 50, 1))
    assert model.predict("cuda", ("a", 50, 1), ("b", 50, 1)) == pytest.approx(1.0 + 0.05 + 0.1)


def test_non_positive_measurements_are_rejected() -> None:
    with pytest.raises(ValueError):
        InterferenceModel.fit([CoLocation("cuda", ("a", 50, 1), ("b", 50, 1), 0.0)], features)


def table() -> ProfileTable:
    pts = []
    for v, per_item in (("a", 0.1), ("c", 0.4)):
        for p in (20, 50, 100):
            for b in (1, 8, 32):
                lat = 1.0 + per_item * b * 100 / p
                pts.append(ProfilePoint(v, "cuda", p, b, lat, lat * 1.1))
    return ProfileTable(pts)


def test_latency_features_describe_share_and_drive() -> None:
    f = latency_features(table())
    share, drive = f("cuda", "a", 50, 32)
    assert share == pytest.approx(0.5)
    assert 0.0 < drive <= share
    # more batch -> more throughput -> drives its share harder
    assert f("cuda", "a", 50, 1)[1] < f("cuda", "a", 50, 32)[1]


def test_fit_with_a_table_and_no_counters_uses_latency_features() -> None:
    t = table()
    f = latency_features(t)
    rows = []
    for pa, ba, pb, bb in ((20, 1, 50, 8), (50, 8, 50, 32), (20, 32, 100, 1), (50, 1, 20, 8), (100, 8, 20, 32), (50, 32, 50, 1), (20, 8, 50, 32)):
        a, b = ("a", pa, ba), ("c", pb, bb)
        rows.append(CoLocation("cuda", a, b, 1.0 + 0.3 * f("cuda", *b)[1] + 0.05 * f("cuda", *a)[0]))
    model = InterferenceModel.fit(rows, table=t)
    assert model.error(rows)["max_abs"] < 1e-9
