"""Prometheus metrics of ``step35 serve``: the engine's gauges and counters, read at scrape time,
and per-route HTTP counts, time to first token, duration and how requests ended."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Metrics", "Tracker"]

#: Time-to-first-token and duration histogram buckets, in seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _EngineCollector:
    """Prometheus collector reading ``engine.metrics()`` at scrape time."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Any]:
        metrics = getattr(self.engine, "metrics", None)
        if metrics is None:
            return []
        m = metrics()
        out: list[Any] = []
        for name, key, doc in (("step35_slots", "slots", "Sequences the engine decodes at once (-np)."),
                               ("step35_prompt_cache_bytes", "prompt_cache_bytes",
                                "Bytes of conversations held in the host-memory prompt cache."),
                               ("step35_prompt_cache_entries", "prompt_cache_entries",
                                "Conversations held in the host-memory prompt cache."),
                               ("step35_requests_running", "running", "Requests holding a slot."),
                               ("step35_requests_waiting", "waiting", "Requests queued for a slot.")):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(m.get(key, 0)))
            out.append(g)
        for name, key, doc in (
                ("step35_prompt_tokens_evaluated", "prompt_tokens_evaluated", "Prompt tokens computed."),
                ("step35_prompt_tokens_cached", "prompt_tokens_cached", "Prompt tokens served from a slot's cache."),
                ("step35_prompt_tokens_restored", "prompt_tokens_restored",
                 "Prompt tokens served from the host-memory prompt cache (part of the cached ones)."),
                ("step35_prompt_tokens_copied", "prompt_tokens_copied",
                 "Prompt tokens copied from another slot (part of the cached ones)."),
                ("step35_checkpoint_restores", "checkpoint_restores",
                 "Prompts served from a checkpoint of a slot's sliding-window layers."),
                ("step35_generated_tokens", "generated_tokens", "Tokens generated."),
                ("step35_draft_tokens", "draft_tokens", "Tokens the MTP heads drafted (serve --mtp)."),
                ("step35_draft_accepted", "draft_accepted", "Drafted tokens the model kept."),
                ("step35_requests_finished", "requests_finished", "Requests the engine finished.")):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(m.get(key, 0)))
            out.append(c)
        return out


class Metrics:
    """The server's Prometheus registry: the engine's figures and per-route request metrics."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(engine))  # type: ignore[arg-type]
        self.requests = Counter("step35_http_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=self.registry)
        self.ttft = Histogram("step35_time_to_first_token_seconds",
                              "From a completion request's arrival to its first generated text "
                              "(includes waiting for a slot).", ["route"], buckets=_BUCKETS,
                              registry=self.registry)
        self.duration = Histogram("step35_request_duration_seconds",
                                  "From a completion request's arrival to its end.", ["route"],
                                  buckets=_BUCKETS, registry=self.registry)
        self.finished = Counter("step35_completions", "Completion requests by how they ended "
                                "(stop, length, tool_calls, disconnected, error).", ["route", "finish_reason"],
                                registry=self.registry)


class Tracker:
    """Times one completion request and records how it ended."""

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        self.t0 = time.perf_counter()
        self.first = False
        self.done = False

    def output(self) -> None:
        """The request produced output (the first call records its time to first token)."""
        if not self.first:
            self.first = True
            self.metrics.ttft.labels(self.route).observe(time.perf_counter() - self.t0)

    def end(self, reason: str) -> None:
        """The request ended (only the first call counts): stop, length, tool_calls, disconnected or error."""
        if self.done:
            return
        self.done = True
        self.metrics.duration.labels(self.route).observe(time.perf_counter() - self.t0)
        self.metrics.finished.labels(self.route, reason).inc()
