"""Server metrics in the Prometheus text exposition format (version 0.0.4).

A few counters and histograms do not justify a dependency; this writes the format directly. Every update
takes one lock, so the decode thread and the event loop can both record.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _labels(d: dict[str, str] | None) -> Labels:
    return tuple(sorted((d or {}).items()))


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    esc = [(k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in items]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """Counters, gauges (callables read at scrape time) and histograms for one server."""

    def __init__(self, prefix: str = "echocxr"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list]] = defaultdict(dict)  # [bucket counts..., sum, count]
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._gauges: dict[str, object] = {}
        self.counter("requests_total", "HTTP requests answered, by endpoint and status code")
        self.counter("errors_total", "requests answered with an error, by error type")
        self.histogram("request_latency_seconds", "end-to-end request latency", LATENCY_BUCKETS)
        self.histogram("batch_size", "samples per decode batch", BATCH_BUCKETS)
        self.histogram("queue_wait_seconds", "time a request waited for its batch to start", LATENCY_BUCKETS)
        self.counter("batches_total", "decode batches run")
        self.counter("generated_tokens_total", "report tokens generated")
        self.counter("forwards_total", "denoising forwards, summed over samples (TPF = tokens / forwards)")
        self.counter("batch_forwards_total", "model forwards the decode thread ran (a batch forward counts once)")
        self.counter("cancelled_total", "samples cancelled because their client went away")
        self.counter("client_disconnects_total", "requests whose client left before the response began")

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self._help[name] = ("histogram", help_text)
        self._buckets[name] = tuple(buckets)

    def gauge(self, name: str, help_text: str, read) -> None:
        """A gauge whose value is read (by calling `read()`) when /metrics is scraped."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        key = _labels(labels)
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        key = _labels(labels)
        buckets = self._buckets[name]
        with self._lock:
            h = self._hist[name].setdefault(key, [0] * len(buckets) + [0.0, 0])
            for i, b in enumerate(buckets):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A counter's current value (tests and /health read it)."""
        with self._lock:
            return self._counters[name].get(_labels(labels), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        gauges = {name: float(read()) for name, read in self._gauges.items()}  # outside the lock: no lock nesting
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                full = f"{self.prefix}_{name}"
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
                if kind == "counter":
                    series = self._counters.get(name) or {(): 0.0}
                    lines += [f"{full}{_fmt_labels(k)} {_num(v)}" for k, v in sorted(series.items())]
                elif kind == "gauge":
                    lines.append(f"{full} {_num(gauges[name])}")
                else:
                    buckets = self._buckets[name]
                    for key, h in sorted(self._hist.get(name, {}).items()):
                        for i, b in enumerate(buckets):
                            lines.append(f"{full}_bucket{_fmt_labels(key, ('le', _num(b)))} {h[i]}")
                        lines.append(f"{full}_bucket{_fmt_labels(key, ('le', '+Inf'))} {h[-1]}")
                        lines.append(f"{full}_sum{_fmt_labels(key)} {_num(h[-2])}")
                        lines.append(f"{full}_count{_fmt_labels(key)} {h[-1]}")
        return "\n".join(lines) + "\n"
