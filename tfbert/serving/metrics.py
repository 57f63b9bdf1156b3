"""Metrics: the counters and histograms TF Serving exports, in Prometheus text format.

Names and labels follow TF Serving 2.20 (`/tensorflow/serving/request_count` becomes
`:tensorflow:serving:request_count`), so a dashboard built against the stand-in server keeps
working against the real one. Histogram buckets are TF's Exponential(10, 1.8, 33) for
latencies.
"""

import bisect
import re
import threading


def _exponential_buckets(scale, growth, count):
    return [scale * growth**i for i in range(count)]


_LATENCY_BUCKETS = _exponential_buckets(10, 1.8, 33)
_BATCH_SIZE_BUCKETS = _exponential_buckets(1, 2, 15)

# name -> (kind, label names, histogram bucket limits)
_DEFINITIONS = {
    "/tensorflow/serving/request_count": ("counter", ("model_name", "status"), None),
    "/tensorflow/serving/request_latency": (
        "histogram", ("model_name", "API", "entrypoint"), _LATENCY_BUCKETS),
    "/tensorflow/serving/runtime_latency": (
        "histogram", ("model_name", "API", "runtime"), _LATENCY_BUCKETS),
    "/tensorflow/serving/model_warmup_latency": (
        "histogram", ("model_path", "status"), _LATENCY_BUCKETS),
    "/tensorflow/serving/model_warmup_records_read": (
        "counter", ("model_path", "status"), None),
    "/tensorflow/serving/batching/processed_batch_size": (
        "histogram", ("model_name",), _BATCH_SIZE_BUCKETS),
}


def _prometheus_name(name):
    return re.sub(r"[^a-zA-Z0-9_]", ":", name)


def _label_value(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def _number(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """A thread-safe registry of the metrics above."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters = {}  # (name, label values) -> int
        self._histograms = {}  # (name, label values) -> [bucket counts, sum]

    def increment(self, name, labels, by=1):
        kind, label_names, _ = _DEFINITIONS[name]
        assert kind == "counter" and len(labels) == len(label_names)
        key = (name, tuple(str(v) for v in labels))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + by

    def observe(self, name, labels, value):
        kind, label_names, limits = _DEFINITIONS[name]
        assert kind == "histogram" and len(labels) == len(label_names)
        key = (name, tuple(str(v) for v in labels))
        with self._lock:
            entry = self._histograms.setdefault(key, [[0] * (len(limits) + 1), 0.0])
            entry[0][bisect.bisect_left(limits, value)] += 1
            entry[1] += value

    def counter_value(self, name, labels):
        with self._lock:
            return self._counters.get((name, tuple(str(v) for v in labels)), 0)

    def render(self):
        """The Prometheus exposition text, as TF Serving's PrometheusExporter writes it."""
        lines = []
        with self._lock:
            for name, (kind, label_names, limits) in _DEFINITIONS.items():
                prom = _prometheus_name(name)
                if kind == "counter":
                    points = [(k[1], v) for k, v in self._counters.items() if k[0] == name]
                    if not points:
                        continue
                    lines.append(f"# TYPE {prom} counter")
                    for values, count in sorted(points):
                        labels = ",".join(
                            f'{n}="{_label_value(v)}"' for n, v in zip(label_names, values))
                        lines.append(f"{prom}{{{labels}}} {count}")
                else:
                    points = [(k[1], v) for k, v in self._histograms.items() if k[0] == name]
                    if not points:
                        continue
                    lines.append(f"# TYPE {prom} histogram")
                    for values, (counts, total) in sorted(points):
                        labels = ",".join(
                            f'{n}="{_label_value(v)}"' for n, v in zip(label_names, values))
                        prefix = f"{prom}_bucket{{{labels}{',' if labels else ''}"
                        cumulative = 0
                        for i, count in enumerate(counts):
                            cumulative += count
                            le = _number(limits[i]) if i < len(limits) else "+Inf"
                            lines.append(f'{prefix}le="{le}"}} {cumulative}')
                        lines.append(f"{prom}_sum{{{labels}}} {_number(total)}")
                        lines.append(f"{prom}_count{{{labels}}} {cumulative}")
        return "\n".join(lines) + "\n"
