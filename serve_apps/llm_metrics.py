"""Prometheus series of an LLM replica (``ray_maas_llm_*``), per model and version.

Time to first token, and time per output token as vLLM defines it: (latency - TTFT) /
(output tokens - 1), one observation per finished request. Token counters and the engine's
gauges (running and waiting sequences, cache occupancy) are handed to Ray once a second: each
Ray metric call costs tens of microseconds, and a stream makes a token every few milliseconds.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from maas.llm.engine import EngineStats

SECONDS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30]


@dataclass
class RequestClock:
    """One request's timing, for TTFT and TPOT."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    def tpot(self, tokens: int) -> float | None:
        if self.first_token is None or tokens < 2:
            return None
        return (time.perf_counter() - self.first_token) / (tokens - 1)


class LLMMetrics:
    """The replica's LLM series; ``finished`` per request, ``engine`` once a second."""

    def __init__(self, model: str) -> None:
        from ray.serve import metrics

        self.model = model
        tags = ("model", "version")
        self._ttft = metrics.Histogram("maas_llm_time_to_first_token_s", boundaries=SECONDS,
                                       description="request start to first token (s)",
                                       tag_keys=tags)
        self._tpot = metrics.Histogram("maas_llm_time_per_output_token_s", boundaries=SECONDS,
                                       description="(latency - TTFT) / (output tokens - 1) (s)",
                                       tag_keys=tags)
        self._tokens = metrics.Counter("maas_llm_tokens", tag_keys=(*tags, "kind"),
                                       description="prompt and output tokens")
        self._finished = metrics.Counter("maas_llm_finished", tag_keys=(*tags, "reason"),
                                         description="requests by finish reason")
        self._running = metrics.Gauge("maas_llm_running_sequences", tag_keys=tags,
                                      description="sequences in the decode batch")
        self._waiting = metrics.Gauge("maas_llm_waiting_sequences", tag_keys=tags,
                                      description="sequences waiting for a slot")
        self._cache = metrics.Gauge("maas_llm_kv_cache_usage", tag_keys=tags,
                                    description="share of the key/value cache's positions held")
        self._pending: Counter = Counter()
        self._flushed = time.monotonic()

    def finished(self, version: str, clock: RequestClock, prompt: int, output: int,
                 reason: str) -> None:
        tags = {"model": self.model, "version": version}
        ttft, tpot = clock.ttft(), clock.tpot(output)
        if ttft is not None:
            self._ttft.observe(ttft, tags=tags)
        if tpot is not None:
            self._tpot.observe(tpot, tags=tags)
        self._pending[(version, "tokens", "prompt")] += prompt
        self._pending[(version, "tokens", "output")] += output
        self._pending[(version, "finished", reason)] += 1

    def engine(self, version: str, stats: EngineStats) -> None:
        tags = {"model": self.model, "version": version}
        self._running.set(stats.running, tags=tags)
        self._waiting.set(stats.waiting, tags=tags)
        self._cache.set(stats.cache_tokens / max(1, stats.cache_capacity), tags=tags)
        self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, Counter()
        for (version, series, label), count in pending.items():
            if not count:
                continue
            if series == "tokens":
                self._tokens.inc(count, tags={"model": self.model, "version": version,
                                              "kind": label})
            else:
                self._finished.inc(count, tags={"model": self.model, "version": version,
                                                "reason": label})
