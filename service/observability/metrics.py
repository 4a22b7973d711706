"""Every Prometheus object of the service, on a registry injected per app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
SCORE_BUCKETS = (1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)
CRITIQUE_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# Request outcomes are a small fixed set, derived from the HTTP status.
OUTCOMES = {
    200: "ok",
    401: "unauthorized",
    413: "too_large",
    422: "invalid",
    429: "overloaded",
    499: "cancelled",
    503: "unavailable",
    504: "deadline",
}


ENDPOINTS = ("score", "compare", "rank")


class PrefixCacheStats(Protocol):
    """What the metrics read from an engine's cross-request prefix cache."""

    hits: int
    misses: int

    @property
    def bytes(self) -> int: ...


class PrefixCacheCollector(Collector):
    """The transformers engine's prefix-cache counters, read at scrape time (zeros without one)."""

    def __init__(self) -> None:
        self.source: Callable[[], PrefixCacheStats | None] = lambda: None

    def collect(self) -> Iterator[Metric]:
        cache = self.source()
        yield CounterMetricFamily(
            "judge_prefix_cache_hits",
            "Prompts that started from a prefix kept from an earlier batch (transformers engine).",
            value=cache.hits if cache else 0,
        )
        yield CounterMetricFamily(
            "judge_prefix_cache_misses",
            "Prompts that found no kept prefix (transformers engine); a prefix they share may be kept after.",
            value=cache.misses if cache else 0,
        )
        yield GaugeMetricFamily(
            "judge_prefix_cache_bytes",
            "Memory held by the KV caches of kept prefixes and recent prompts (transformers engine).",
            value=cache.bytes if cache else 0,
        )


class JobsCollector(Collector):
    """Batch jobs by status, read from the job store at scrape time (none without one)."""

    STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        counts = self.source() if self.source is not None else {}
        family = GaugeMetricFamily("judge_batch_jobs", "Batch jobs in the job store by status.", labels=["status"])
        for status in self.STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


def outcome_of(status: int) -> str:
    return OUTCOMES.get(status, "error" if status >= 500 else "rejected")


class Metrics:
    """The service's metrics; pass a fresh registry per app (and per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._declare_requests(r)
        self._declare_queue(r)
        self._declare_answers(r)
        self._declare_critiques_and_jobs(r)
        self._export_every_series()

    def _declare_requests(self, r: CollectorRegistry) -> None:
        """Requests by outcome and their latency."""
        self.requests = Counter(
            "judge_requests", "Scoring requests by endpoint and outcome.", ["endpoint", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "judge_request_duration_seconds", "Request latency.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )

    def _declare_queue(self, r: CollectorRegistry) -> None:
        """The queue and the engine batches it runs."""
        self.queue_wait = Histogram(
            "judge_queue_wait_seconds", "Time an item waits before its batch runs.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "judge_inference_duration_seconds", "Engine time per batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "judge_batch_size", "Items per engine batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "judge_batch_tokens", "Tokens per engine batch, padding included.", buckets=TOKEN_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "judge_queue_depth", "Prompts admitted to the queue and not yet finished (waiting or running).", registry=r
        )
        # Named as in the Gateway API Inference Extension's model-server protocol.
        self.requests_waiting = Gauge(
            "judge_num_requests_waiting", "Admitted requests none of whose prompts has started.", registry=r
        )
        self.requests_running = Gauge(
            "judge_num_requests_running", "Admitted requests with prompts in the engine, not yet finished.", registry=r
        )

    def _declare_answers(self, r: CollectorRegistry) -> None:
        """What answered requests held, what was dropped or refused, and the throughput admission uses."""
        self.items = Counter(
            "judge_items",
            "Request items answered: score items, compare pairs, or rank candidates.",
            ["endpoint", "method"],
            registry=r,
        )
        self.prompts = Counter(
            "judge_prompts", "Prompts the engine scored for answered requests (a swapped pair is two).", registry=r
        )
        self.prompt_tokens = Counter(
            "judge_prompt_tokens", "Tokens of the prompts counted in judge_prompts.", registry=r
        )
        self.items_skipped = Counter(
            "judge_items_skipped",
            "Prompts dropped before inference: queued ones, and critiques given up during their generation.",
            ["reason"],
            registry=r,
        )
        self.batch_failures = Counter("judge_batch_failures", "Engine batches that raised.", registry=r)
        self.queue_faults = Counter(
            "judge_queue_faults", "Faults of the batch loop itself, outside engine calls.", registry=r
        )
        self.admission_refusals = Counter(
            "judge_admission_refusals", "Requests refused (429) because they could not meet their deadline.", registry=r
        )
        self.throughput = Gauge(
            "judge_throughput_tokens_per_second",
            "Prompt tokens completed per second of busy engine time, recently; admission predicts from it.",
            registry=r,
        )

    def _declare_critiques_and_jobs(self, r: CollectorRegistry) -> None:
        """Scores and critiques returned, the model, readiness, and the batch jobs."""
        self.expected_score = Histogram(
            "judge_expected_score", "Expected scores returned.", buckets=SCORE_BUCKETS, registry=r
        )
        self.generated_tokens = Counter(
            "judge_generated_tokens",
            "Tokens generated for critiques, answered or not (end of sequence not counted).",
            registry=r,
        )
        self.critique_tokens = Histogram(
            "judge_critique_tokens",
            "Tokens of each generated critique.",
            buckets=CRITIQUE_BUCKETS,
            registry=r,
        )
        self.prefix_cache = PrefixCacheCollector()
        r.register(self.prefix_cache)
        self.model_info = Info("judge_model", "The loaded judge model.", registry=r)
        self.ready = Gauge("judge_ready", "1 when the service accepts scoring requests.", registry=r)
        # Batch jobs: work at the scheduler's batch priority, never counted in the online gauges above.
        self.jobs = JobsCollector()
        r.register(self.jobs)
        self.batch_items = Counter(
            "judge_batch_items", "Batch lines answered, by outcome (completed: 200).", ["outcome"], registry=r
        )
        self.batch_lane_depth = Gauge(
            "judge_batch_lane_depth", "Batch lines' prompts waiting for an engine pass.", registry=r
        )
        self.batch_lane_prompts = Counter(
            "judge_batch_lane_prompts",
            "Prompts batch passes scored, whether or not their answers were kept.",
            registry=r,
        )
        for outcome in ("completed", "failed"):
            self.batch_items.labels(outcome=outcome)

    def _export_every_series(self) -> None:
        """Export every labelled series from the start, so dashboards and alerts see zeros, not gaps."""
        for outcome in (*OUTCOMES.values(), "error", "rejected"):
            for endpoint in ENDPOINTS:
                self.requests.labels(endpoint=endpoint, outcome=outcome)
        for reason in ("cancelled", "deadline"):
            self.items_skipped.labels(reason=reason)
        for method in ("final", "lager", "lager_weighted", "probe"):
            self.items.labels(endpoint="score", method=method)
        self.items.labels(endpoint="compare", method="final")
        for strategy in ("pairwise", "pointwise"):
            self.items.labels(endpoint="rank", method=strategy)
        for endpoint in ENDPOINTS:
            self.request_duration.labels(endpoint=endpoint)

    def critiqued(self, tokens: int) -> None:
        """Count one generated critique of ``tokens`` tokens."""
        self.generated_tokens.inc(tokens)
        self.critique_tokens.observe(tokens)

    def answered(self, endpoint: str, method: str, items: int, prompts: int, tokens: int) -> None:
        """Count one answered request: its items (or pairs), and the prompts and tokens scored for it."""
        self.items.labels(endpoint=endpoint, method=method).inc(items)
        self.prompts.inc(prompts)
        self.prompt_tokens.inc(tokens)
