"""overlay.metrics: the one Prometheus text renderer flanneld and dnsd share."""

from __future__ import annotations

import pytest

from overlay.metrics import Histogram, counter, gauge, histogram, number, render


def test_counters_gauges_and_labels() -> None:
    text = render([
        counter("x_total", "Things.", 3),
        counter("req_total", "Requests.", {("b", "A"): 2, ("a", 'q"\\\n'): 1},
                labels=("zone", "type")),
        gauge("up", "", 1.0),
    ])
    assert text.splitlines() == [
        "# HELP x_total Things.", "# TYPE x_total counter", "x_total 3",
        "# HELP req_total Requests.", "# TYPE req_total counter",
        'req_total{zone="a",type="q\\"\\\\\\n"} 1', 'req_total{zone="b",type="A"} 2',
        "# TYPE up gauge", "up 1",
    ]


def test_histogram_buckets_are_cumulative_per_label_set() -> None:
    h1, h2 = Histogram((0.1, 1.0)), Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h1.observe(v)
    h2.observe(0.1)  # on a bound: counted in that bucket (le = less or equal)
    lines = render([histogram("d_seconds", "Time.", {("x",): h1, ("y",): h2},
                              labels=("server",))]).splitlines()
    assert lines[1] == "# TYPE d_seconds histogram"
    assert lines[2:7] == ['d_seconds_bucket{server="x",le="0.1"} 1',
                          'd_seconds_bucket{server="x",le="1.0"} 2',
                          'd_seconds_bucket{server="x",le="+Inf"} 3',
                          'd_seconds_sum{server="x"} 5.55', 'd_seconds_count{server="x"} 3']
    assert lines[7] == 'd_seconds_bucket{server="y",le="0.1"} 1'
    assert render([histogram("h", "", Histogram((1.0,)))]).splitlines()[-2:] == [
        "h_sum 0", "h_count 0"]


def test_numbers_and_bad_input() -> None:
    assert [number(v) for v in (3, 2.0, 0.25, 1234567.0, float("inf"), True)] == [
        "3", "2", "0.25", "1234567", "+Inf", "1"]
    with pytest.raises(ValueError):
        counter("c", "", {("a", "b"): 1}, labels=("one",))
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
