"""Telemetry on an injected clock: what each outcome counts, the rolling window, bounded memory, exposition."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.exposition import gateway_registry
from gateway.telemetry import Outcome, Telemetry


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ok(tel: Telemetry, *, model="digits", family="digits", variant="small", met=True, latency_s=0.01, **kw) -> None:
    tel.answered(model=model, family=family, variant=variant, met=met, latency_s=latency_s, accuracy=0.9, **kw)


def samples(tel: Telemetry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(gateway_registry(tel)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_each_outcome_lands_in_its_own_column_of_the_current_second():
    clock = Clock()
    tel = Telemetry(clock=clock)
    ok(tel, met=True)
    ok(tel, met=False)
    tel.failed(model="digits", family="digits", variant="small", outcome=Outcome.DEADLINE_MISSED, reason="deadline")
    tel.failed(model="digits", family="digits", variant="", outcome=Outcome.SHED, reason="shed")
    tel.failed(model="digits", family="digits", variant="", outcome=Outcome.ERROR, reason="backend")
    tel.failed(model="", family="", variant="", outcome=Outcome.INVALID, reason="not_found")
    tel.failed(model="digits", family="digits", variant="", outcome=Outcome.INVALID, reason="invalid")
    (second,) = tel.recent()["series"]
    assert second == {"t": int(clock.t), "requests": 7, "ok": 1, "late": 1, "deadline_missed": 1, "shed": 1,
                      "errors": 1, "invalid": 2, "accuracy_sum": pytest.approx(1.8), "accuracy_n": 2}
    # The family's SLO judges the five requests it accepted, not the one whose body was wrong.
    assert tel.recent()["families"] == {"digits": {"requests": 5, "slo_met": 1, "variants": {}}}


def test_a_success_cannot_be_recorded_as_a_failure():
    with pytest.raises(ValueError):
        Telemetry().failed(model="m", family="f", variant="v", outcome=Outcome.MET, reason="x")


def test_the_window_rolls_seconds_out_and_fills_quiet_seconds_with_zeros():
    clock = Clock(1000.2)
    tel = Telemetry(clock=clock, window_s=5)
    ok(tel, selected=True)
    clock.t = 1002.7
    ok(tel, variant="large", selected=True)
    recent = tel.recent()
    assert [s["t"] for s in recent["series"]] == [1000, 1001, 1002]
    assert [s["requests"] for s in recent["series"]] == [1, 0, 1]
    assert recent["families"]["digits"]["variants"] == {"small": 1, "large": 1}
    clock.t = 1005.0  # 1000 is now older than the 5 s window
    recent = tel.recent()
    assert [s["t"] for s in recent["series"]] == [1002, 1003, 1004, 1005]
    assert recent["families"]["digits"] == {"requests": 1, "slo_met": 1, "variants": {"large": 1}}
    clock.t = 2000.0
    assert tel.recent() == {"interval_s": 1, "series": [], "families": {}}
    # ...while the Prometheus counters never forget.
    assert tel.families["digits"].outcomes[Outcome.MET] == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=300))
def test_memory_stays_bounded_by_the_window_whatever_the_traffic(steps):
    clock = Clock(0.0)
    tel = Telemetry(clock=clock, window_s=10)
    for dt, name, met in steps:
        clock.t += dt
        ok(tel, model=name, family=name, variant=name, met=met, selected=True)
        assert len(tel._window) <= 10
        assert all(b.t > int(clock.t) - 10 for b in tel._window)
    recent = tel.recent()
    assert len(recent["series"]) <= 10
    assert sum(s["requests"] for s in recent["series"]) == sum(f["requests"] for f in recent["families"].values())


def test_labels_stop_growing_at_the_cap_but_the_window_still_counts():
    tel = Telemetry(clock=Clock(), max_series=4)
    for i in range(10):
        ok(tel, model=f"m{i}", family=f"f{i}", variant=f"v{i}")
    assert len(tel.series) + len(tel.families) <= 4
    assert tel.dropped_labels > 0
    assert samples(tel)[("letmesh_telemetry_dropped_labels_total", ())] == tel.dropped_labels
    assert tel.recent()["series"][0]["requests"] == 10


def test_triton_statistics_sum_every_variant_that_served_a_name():
    clock = Clock(1_700_000_000.5)
    tel = Telemetry(clock=clock)
    ok(tel, variant="small", latency_s=0.002, queue_us=100, compute_us=500, rows=2, batch_size=4)
    ok(tel, variant="large", latency_s=0.004, queue_us=300, compute_us=900, rows=1, batch_size=1)
    tel.failed(model="digits", family="digits", variant="large", outcome=Outcome.DEADLINE_MISSED, reason="deadline",
               latency_s=0.1)
    (entry,) = [tel.stats("digits", "1")]
    assert entry["name"] == "digits" and entry["version"] == "1"
    assert entry["last_inference"] == 1_700_000_000_500
    assert entry["inference_count"] == 3
    assert entry["execution_count"] == round(2 / 4 + 1)
    stats = entry["inference_stats"]
    assert stats["success"] == {"count": 2, "ns": 6_000_000}
    assert stats["fail"] == {"count": 1, "ns": 100_000_000}
    assert stats["queue"] == {"count": 2, "ns": 400_000}
    assert stats["compute_infer"] == {"count": 2, "ns": 1_400_000}
    assert set(stats) >= {"compute_input", "compute_output"}
    assert entry["letmesh_variants"] == {"large": {"success": 1, "fail": 1}, "small": {"success": 1, "fail": 0}}
    assert tel.stats("other", "1")["inference_stats"]["success"] == {"count": 0, "ns": 0}


def test_prometheus_exposition_carries_triton_names_labels_and_histograms():
    clock = Clock()
    tel = Telemetry(clock=clock)
    ok(tel, latency_s=0.003, queue_us=10, compute_us=20, rows=1, batch_size=3, selected=True, explored=False)
    ok(tel, latency_s=0.2, met=False, rows=1, batch_size=1, selected=True, explored=True)
    tel.failed(model="digits", family="digits", variant="small", outcome=Outcome.SHED, reason="overloaded",
               selected=True, explored=False)  # chosen, then turned away: still a choice the bandit made
    got = samples(tel)
    mv = (("model", "digits"), ("variant", "small"))
    assert got[("letmesh_inference_request_success_total", mv)] == 2
    assert got[("letmesh_inference_request_failure_total", (("model", "digits"), ("reason", "overloaded"), ("variant", "small")))] == 1
    assert got[("letmesh_inference_count_total", mv)] == 2
    assert got[("letmesh_inference_exec_count_total", mv)] == pytest.approx(1 / 3 + 1)
    assert got[("letmesh_inference_queue_duration_us_total", mv)] == 10
    assert got[("letmesh_inference_compute_infer_duration_us_total", mv)] == 20
    assert got[("letmesh_inference_request_latency_seconds_count", mv)] == 2
    assert got[("letmesh_inference_request_latency_seconds_bucket", (("le", "0.005"), *mv))] == 1
    assert got[("letmesh_inference_batch_size_bucket", (("le", "4.0"), *mv))] == 2
    fam = (("family", "digits"),)
    assert got[("letmesh_slo_requests_total", (*fam, ("outcome", "met")))] == 1
    assert got[("letmesh_slo_requests_total", (*fam, ("outcome", "late")))] == 1
    assert got[("letmesh_slo_requests_total", (*fam, ("outcome", "shed")))] == 1
    assert got[("letmesh_variant_chosen_total", (*fam, ("variant", "small")))] == 3
    assert got[("letmesh_bandit_explorations_total", fam)] == 1
    assert got[("letmesh_bandit_decisions_total", fam)] == 3
    assert got[("letmesh_goodput_rps", fam)] == pytest.approx(1 / 60)
    assert got[("letmesh_effective_accuracy", fam)] == pytest.approx(0.9)
    assert got[("letmesh_bandit_exploration_rate", fam)] == pytest.approx(1 / 3)


def test_a_family_request_turned_away_before_a_variant_is_chosen_exports_its_failure_and_nothing_else():
    tel = Telemetry(clock=Clock())
    ok(tel, selected=True)
    tel.failed(model="digits", family="digits", variant="", outcome=Outcome.SHED, reason="no_worker")

    got = samples(tel)

    unchosen = [(name, labels) for name, labels in got if dict(labels).get("variant") == ""]
    assert unchosen == [("letmesh_inference_request_failure_total",
                         (("model", "digits"), ("reason", "no_worker"), ("variant", "")))]
    assert got[unchosen[0]] == 1
    assert got[("letmesh_inference_request_success_total", (("model", "digits"), ("variant", "small")))] == 1
    assert got[("letmesh_slo_requests_total", (("family", "digits"), ("outcome", "shed")))] == 1
    assert tel.stats("digits", "1")["inference_stats"]["fail"]["count"] == 1  # Triton's statistics still count it


def test_rates_have_no_accuracy_or_exploration_without_answers_or_decisions():
    tel = Telemetry(clock=Clock())
    tel.failed(model="digits", family="digits", variant="", outcome=Outcome.SHED, reason="shed")
    rates = tel.rates()["digits"]
    assert rates["goodput_rps"] == 0 and math.isnan(rates["effective_accuracy"]) and math.isnan(rates["exploration"])
    assert ("letmesh_effective_accuracy", (("family", "digits"),)) not in samples(tel)


def test_a_family_gone_quiet_reads_zero_goodput_rather_than_no_series():
    clock = Clock()
    tel = Telemetry(clock=clock)
    ok(tel, selected=True)
    clock.t += 120  # two windows without a request
    got = samples(tel)
    assert got[("letmesh_goodput_rps", (("family", "digits"),))] == 0
    assert ("letmesh_effective_accuracy", (("family", "digits"),)) not in got  # nothing answered: no accuracy
