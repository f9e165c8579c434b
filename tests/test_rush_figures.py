"""The rush's CPU figures (``bench.rush.figures``): the window of the sustained rate and the CPU
per unit finished in it, the way the report states the issue's targets (machine busy while
saturated, platform CPU per credited order); and the statements per unit from scraped counters."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.rush.figures import (
    cpu_per_unit,
    overload_goodput,
    per_unit_by_service,
    sustained_rate,
    sustained_window,
)
from bench.rush.platform import DB_QUERIES, HTTP, MetricsScraper, ProcessSampler, Sample, _read_only, sample_processes

T0 = datetime(2026, 12, 7, tzinfo=UTC)


def test_the_window_is_the_one_the_sustained_rate_is_measured_over() -> None:
    # a slow start, 91 events one every 0.1 s, a slow tail
    times = [T0 + timedelta(seconds=s) for s in (0, 5)] + [T0 + timedelta(seconds=10 + n / 10) for n in range(91)] \
        + [T0 + timedelta(seconds=s) for s in (40, 60)]
    window = sustained_window(times)
    assert window is not None
    start, end, inside = window
    assert (end - start).total_seconds() > 0
    assert round(inside / (end - start).total_seconds(), 1) == sustained_rate(times)
    assert T0 + timedelta(seconds=10) <= start < end <= T0 + timedelta(seconds=19)


def test_too_few_events_have_no_window() -> None:
    assert sustained_window([T0 + timedelta(seconds=n) for n in range(9)]) is None
    assert sustained_window([T0] * 20) is None


def test_cpu_per_unit_leaves_the_load_generator_out_of_the_platform() -> None:
    cores = {"postgresql": 0.4, "order-api": 0.2, "bench": 0.3, "machine_busy": 1.9}
    figures = cpu_per_unit(cores, seconds=10.0, units=200)
    # 10 s x 0.4 cores = 4 s of CPU for 200 orders: 20 ms each
    assert figures["cpu_ms_per_unit_by_process"] == {"postgresql": 20.0, "bench": 15.0, "order-api": 10.0}
    assert figures["platform_cpu_ms_per_unit"] == 30.0
    assert figures["machine_busy_cores"] == 1.9
    assert cpu_per_unit(cores, seconds=10.0, units=0)["platform_cpu_ms_per_unit"] is None


def test_statements_per_unit_by_service_and_process() -> None:
    sent = {"order-api": 600.0, "order-worker": 300.0, "order-relay": 100.0, "payment-api": 250.0}
    assert per_unit_by_service(sent, 50) == {
        "total": 25.0,
        "by_service": {"order": 20.0, "payment": 5.0},
        "by_process": {"order-api": 12.0, "order-relay": 2.0, "order-worker": 6.0, "payment-api": 5.0},
    }


def test_no_figure_without_counts_or_units() -> None:
    assert per_unit_by_service({}, 10) is None  # a running platform that does not count
    assert per_unit_by_service({"order-api": 5.0}, 0) is None


def test_statements_between_the_scrapes_around_a_window() -> None:
    scraper = MetricsScraper({}, interval_s=5.0)
    scraper.db_queries = [
        (4.0, {"order-api": 10.0}),  # too early: more than one interval before the window
        (5.0, {"order-api": 100.0, "order-worker": 40.0}),  # the last scrape before the window
        (12.0, {"order-api": 150.0, "order-worker": 70.0}),
        (25.0, {"order-api": 400.0, "order-worker": 6.0, "payment-api": 9.0}),  # the first after it
        (26.0, {"order-api": 900.0}),  # too late
    ]
    # 20 s between the scrapes, 10 s of window: half of what was sent between them; order-worker
    # restarted (its counter began again) and payment-api appeared: counted from zero
    assert scraper.db_queries_between(10.0, 20.0) == {"order-api": 150.0, "order-worker": 3.0, "payment-api": 4.5}
    assert MetricsScraper({}).db_queries_between(0.0, 1.0) == {}


def _at(*seconds: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in seconds]


def test_steady_goodput_is_the_plateaus_last_window_against_the_peak_while_arriving() -> None:
    # ramp: 10/s for 10 s; overload plateau from 10 s to 30 s: 5/s; then the backlog drains at 40/s
    ramp = [n / 10 for n in range(100)]
    plateau = [10 + n / 5 for n in range(100)]
    drain = [30.5 + n / 40 for n in range(400)]
    figures = overload_goodput(_at(*ramp, *plateau, *drain), plateau_start=T0 + timedelta(seconds=10),
                               last_arrival=T0 + timedelta(seconds=30), window_s=5.0)
    assert figures["peak_while_arriving_per_s"] == 10.2  # 51 events within a 5 s window of the ramp
    assert figures["goodput_per_s"] == 5.0  # 25.0 .. 29.8 s
    assert figures["goodput_ratio"] == round(5.0 / 10.2, 3)
    # the old figure: the plateau's first window against the drain's peak
    assert figures["peak_per_s"] > 40
    assert figures["transient_goodput_ratio"] < figures["goodput_ratio"]


def test_a_plateau_shorter_than_two_windows_has_no_steady_goodput() -> None:
    figures = overload_goodput(_at(*(n / 10 for n in range(200))), plateau_start=T0 + timedelta(seconds=12),
                               last_arrival=T0 + timedelta(seconds=20), window_s=6.0)
    assert figures["goodput_ratio"] is None
    assert "8.0 s" in figures["why"]
    assert figures["transient_goodput_ratio"] is not None


def test_the_sustained_window_starts_at_saturation_when_the_ramp_outlasts_the_first_tenth() -> None:
    # a ramp of 40 events over 20 s, then 100 events one every 0.05 s from 20 s on: the 10th
    # percentile falls in the ramp, whose rate was the load's, not the platform's
    ramp = [T0 + timedelta(seconds=n / 2) for n in range(40)]
    busy = [T0 + timedelta(seconds=20 + n / 20) for n in range(100)]
    times = ramp + busy
    saturated = T0 + timedelta(seconds=20)
    start, end, inside = sustained_window(times, not_before=saturated) or (T0, T0, 0)
    assert start == saturated
    assert sustained_rate(times, not_before=saturated) == round(inside / (end - start).total_seconds(), 1)
    assert sustained_rate(times, not_before=saturated) > 15 > sustained_rate(times)
    # saturation before the 10th percentile changes nothing; so does one too late to leave ten events
    early = T0 + timedelta(seconds=1)
    assert sustained_window(times, not_before=early) == sustained_window(times)
    late = T0 + timedelta(seconds=25.9)
    assert sustained_window(times, not_before=late) == sustained_window(times)


def test_cpu_between_interpolates_between_the_samples() -> None:
    sampler = ProcessSampler({})
    # two processes and the machine, sampled every second: order-api at 0.5 cores, postgresql idle
    # for 2 s then at 1.0 core, the machine as their sum
    for t in range(6):
        pg = max(0.0, t - 2.0)
        sampler.samples.append(Sample(at=float(t), rss={}, tree_rss={},
                                      cpu={"order-api": 0.5 * t, "postgresql": pg}, machine_busy_s=0.5 * t + pg))
    # from 2.5 s to 4.5 s: inside samples, not widened to them
    cores = sampler.cpu_between(2.5, 4.5)
    assert cores == {"postgresql": 1.0, "order-api": 0.5, "machine_busy": 1.5}
    # the window is clamped to what was sampled
    assert sampler.cpu_between(-3.0, 1.0) == {"order-api": 0.5, "machine_busy": 0.5}
    assert ProcessSampler({}).cpu_between(0.0, 1.0) == {}


def test_the_overload_report_gives_the_cpu_of_the_two_windows_it_compares() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from bench.rush.main import overload_cpu

    sampler = ProcessSampler({})
    # the load generator at 0.2 cores for 10 s, then at 0.6; the order api at 1.5, then 1.0
    for t in range(21):
        bench = 0.2 * t if t <= 10 else 2.0 + 0.6 * (t - 10)
        api = 1.5 * t if t <= 10 else 15.0 + 1.0 * (t - 10)
        sampler.samples.append(Sample(at=float(t), rss={}, tree_rss={}, cpu={"bench": bench, "order-api": api},
                                      machine_busy_s=bench + api))
    figures = overload_cpu(cast(Any, SimpleNamespace(sampler=sampler)), {"best": (2.0, 8.0), "last": (13.0, 19.0)})
    assert figures["cpu_cores_best_window"] == {"order-api": 1.5, "bench": 0.2, "machine_busy": 1.7}
    assert figures["cpu_cores_last_window"] == {"order-api": 1.0, "bench": 0.6, "machine_busy": 1.6}
    assert "load generator 0.2 → 0.6 cores, platform 1.5 → 1.0" in figures["cores_best_to_last"]
    assert overload_cpu(cast(Any, SimpleNamespace(sampler=sampler)), None) == {}


def test_the_scraper_reads_the_same_samples_from_the_lines_it_keeps() -> None:
    registry = CollectorRegistry()
    latency = Histogram(HTTP, "latency", ["service", "method", "route"], registry=registry)
    latency.labels("order", "GET", "/v1/orders/{order_id}").observe(0.02)
    latency.labels("order", "POST", "/v1/orders").observe(0.3)
    Gauge("emeterai_queue_depth", "depth", ["queue"], registry=registry).labels("order.on_payment_captured").set(7)
    Counter(DB_QUERIES, "statements", ["service", "process"], registry=registry).labels("order", "api").inc(42)
    Gauge("emeterai_not_read", "other", registry=registry).set(1)
    text = generate_latest(registry).decode()

    def samples(page: str) -> list[tuple[str, str, tuple[tuple[str, str], ...], float]]:
        return sorted((f.name, s.name, tuple(sorted(s.labels.items())), s.value)
                      for f in text_string_to_metric_families(page) for s in f.samples
                      if f.name in (HTTP, DB_QUERIES, "emeterai_queue_depth")
                      and not s.name.endswith(("_bucket", "_created")))

    kept = _read_only(text)
    assert len(kept) < len(text) / 2 and "_bucket{" not in kept and "\nemeterai_not_read " not in kept
    assert samples(kept) == samples(text) and len(samples(text)) == 6


def test_the_process_sample_finds_this_process_and_the_servers() -> None:
    sample = sample_processes({os.getpid(): "me"})
    assert sample.cpu["me"] > 0 and sample.rss["me"] > 0
    assert sample.cpu["bench"] >= 0
    assert {"postgresql", "rabbitmq"} <= set(sample.cpu)  # the machine's servers, found by process name
