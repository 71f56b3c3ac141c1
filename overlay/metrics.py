"""Prometheus text exposition (format 0.0.4), rendered once for every weft daemon.

A daemon describes what it exports as ``Family`` values, built with ``counter``,
``gauge`` and ``histogram``, and ``render`` turns a sequence of them into the
text ``/metrics`` serves. Pure: no registry, no globals, no locks; the daemon
keeps its own numbers (plain ints, ``Histogram``) and builds the families when
scraped.

    render([
        counter("dnsd_forwarded_total", "Queries relayed upstream.", 12),
        counter("coredns_dns_requests_total", "Requests by zone and type.",
                {("dns://:53", "skydns.local.", "A"): 40}, labels=("server", "zone", "type")),
        histogram("coredns_dns_request_duration_seconds", "Time to answer.",
                  {("dns://:53", "skydns.local.", "A"): h},
                  labels=("server", "zone", "type")),
    ])

Numbers: an int (or an integral float below 2**53) prints as an integer, other
floats as Python's shortest exact repr, infinities as ``+Inf``/``-Inf``. Label
values are escaped (backslash, double quote, newline) as the format requires.
A family with an empty help has no ``# HELP`` line.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One line: ``name{labels} value`` (``name`` includes any ``_bucket`` suffix)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    """A metric: its name, type, help and samples, in the order they are written."""

    name: str
    kind: Kind
    help: str
    samples: tuple[Sample, ...]


class Histogram:
    """Observations counted into buckets with upper bounds ``bounds`` (ascending; a
    ``+Inf`` bucket is implied), plus their sum and count, as Prometheus histograms."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be strictly ascending: {list(bounds)}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last = +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


def _series(name: str, values: float | Mapping[LabelValues, float],
            labels: Sequence[str]) -> tuple[Sample, ...]:
    if not isinstance(values, Mapping):
        return (Sample(name, (), values),)
    out = []
    for key, value in sorted(values.items()):
        if len(key) != len(labels):
            raise ValueError(f"{name}: label values {key} do not match labels {tuple(labels)}")
        out.append(Sample(name, tuple(zip(labels, key, strict=True)), value))
    return tuple(out)


def counter(name: str, help: str, values: float | Mapping[LabelValues, float],
            labels: Sequence[str] = ()) -> Family:
    """A counter: one value, or one per label-value tuple (``labels`` names them)."""
    return Family(name, "counter", help, _series(name, values, labels))


def gauge(name: str, help: str, values: float | Mapping[LabelValues, float],
          labels: Sequence[str] = ()) -> Family:
    """A gauge: one value, or one per label-value tuple (``labels`` names them)."""
    return Family(name, "gauge", help, _series(name, values, labels))


def histogram(name: str, help: str, series: Histogram | Mapping[LabelValues, Histogram],
              labels: Sequence[str] = ()) -> Family:
    """A histogram: ``_bucket`` lines (cumulative, ``le`` last), ``_sum`` and ``_count``,
    for one ``Histogram`` or one per label-value tuple."""
    items = [((), series)] if isinstance(series, Histogram) else sorted(
        series.items(), key=lambda kv: kv[0])
    samples: list[Sample] = []
    for key, h in items:
        if len(key) != len(labels):
            raise ValueError(f"{name}: label values {key} do not match labels {tuple(labels)}")
        base = tuple(zip(labels, key, strict=True))
        running = 0
        for bound, n in zip(h.bounds, h.counts, strict=False):
            running += n
            samples.append(Sample(f"{name}_bucket", (*base, ("le", str(bound))), running))
        samples.append(Sample(f"{name}_bucket", (*base, ("le", "+Inf")), h.count))
        samples.append(Sample(f"{name}_sum", base, h.sum))
        samples.append(Sample(f"{name}_count", base, h.count))
    return Family(name, "histogram", help, tuple(samples))


def number(value: float) -> str:
    """A sample value as the text format writes it."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(families: Iterable[Family]) -> str:
    """The text exposition of ``families``, in the order given."""
    lines: list[str] = []
    for fam in families:
        if fam.help:
            lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for s in fam.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            lines.append(f"{s.name}{{{labels}}} {number(s.value)}" if labels
                         else f"{s.name} {number(s.value)}")
    return "\n".join(lines) + "\n"
