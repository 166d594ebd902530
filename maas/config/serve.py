"""``models[].serve`` and ``models[].promotion``: how a model's replicas serve it, and which
version takes live traffic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from maas.config.base import StrictModel


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling of one model's replicas, by ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0, le=256, description="never fewer replicas than this")
    max_replicas: int = Field(4, ge=1, le=256, description="never more replicas than this")
    initial_replicas: int | None = Field(None, ge=0, le=256, description="unset: min_replicas")
    target_ongoing_requests: float = Field(
        8.0, gt=0.0, description="requests in flight per replica that autoscaling aims for")
    upscale_delay_s: float = Field(3.0, ge=0.0, description="load must last this long before "
                                                            "a replica is added")
    downscale_delay_s: float = Field(30.0, ge=0.0, description="quiet must last this long "
                                                               "before a replica is removed")
    look_back_period_s: float = Field(
        30.0, gt=0.0, le=3600.0,
        description="load is averaged over this window (Ray Serve's default): a shorter one "
                    "follows a burst's end sooner, a longer one rides out brief dips")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas "
                             f"{self.min_replicas}")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas {initial} must lie between min_replicas and "
                             f"max_replicas")
        return self


class BatchingConfig(StrictModel):
    """Dynamic batching: concurrent requests to one version run as one ONNX Runtime call."""

    max_batch_size: int = Field(16, ge=1, le=4096, description="requests per call; 1: off")
    wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0,
        description="longest a request waits for others to join its batch; 0: a batch is what "
                    "queued while the last one ran (measured best here: 1 ms of waiting cost "
                    "3 ms of p50 at low load and gained no throughput)")
    inline_below_ms: float = Field(
        0.5, ge=0.0, le=1000.0,
        description="a model whose batches take less than this (measured as it serves) runs "
                    "on the replica's event loop: a thread hop costs more than its call; 0: "
                    "always on the batch thread")


class LLMServeConfig(StrictModel):
    """The generation engine of a chat LLM's replicas (``pretrained.task: chat``): continuous
    batching over one key/value cache per replica, bounded by these numbers."""

    max_num_seqs: int = Field(
        16, ge=1, le=256,
        description="sequences decoded together; more requests wait (measured here: 16 streams "
                    "give ~3x one stream's tokens/s, beyond that a decode step only gets slower)")
    context_length: int = Field(
        2048, ge=64, le=131072,
        description="prompt + completion tokens per sequence; the cache holds max_num_seqs of "
                    "these (46 KB per token for SmolLM2-135M: 16 x 2048 is 1.5 GB)")
    max_prefill_tokens: int = Field(
        64, ge=16, le=131072,
        description="prompt tokens prefilled between two decode steps (a longer prompt goes "
                    "in by chunks of this many): prefill is compute-bound (~1.7 ms a token "
                    "here) and gains nothing from batching, so prompts go in one or two a step; "
                    "measured: TTFT p50 at 16 streams 2.5x one stream's with 64, 13x with 1024 "
                    "(a burst prefilled together waits together, and stays in step)")
    default_max_tokens: int = Field(
        512, ge=1, description="completion tokens when a request names no max_tokens (capped "
                               "by what the context has left)")
    max_stop_sequences: int = Field(4, ge=0, le=64, description="`stop` entries per request")


class ServeConfig(StrictModel):
    """One model's Ray Serve app: replicas, resources, limits, batching, canary, promotion."""

    num_replicas: int = Field(1, ge=1, le=64, description="fixed replicas, without autoscaling")
    autoscaling: AutoscalingConfig | None = Field(None, description="set: replaces num_replicas")
    cpus_per_replica: float = Field(0.25, gt=0.0, description="CPUs Ray reserves per replica")
    ort_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads")
    ort_spin: bool = Field(
        False, description="let those threads spin-wait between runs: faster on cores the "
                           "replica has to itself, but on shared cores they starve the "
                           "processes around it (streamed answers then arrive in one burst)")
    max_rows: int = Field(1024, ge=1, description="rows allowed in one infer request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="larger request bodies get 413")
    body_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0,
        description="a request body not all received within this many seconds gets 408 (a "
                    "slow or stalled client would otherwise hold its request open for ever)")
    batching: BatchingConfig = Field(default_factory=BatchingConfig,
                                     description="dynamic batching of concurrent requests")
    canary_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="share of unversioned requests sent to the 'canary' version, when one is set")
    alias_poll_s: float = Field(
        2.0, gt=0.0, le=3600.0,
        description="how often replicas re-read the production and canary aliases")
    access_log: bool = Field(
        False, description="Serve's per-request access log lines (a measurable cost per request)")
    max_ongoing_requests: int = Field(
        64, ge=1, le=100_000,
        description="requests a replica works on at once (they wait for batching inside it); "
                    "more queue in the replica")
    max_queued_requests: int = Field(
        256, ge=1, le=1_000_000,
        description="requests queued in a replica beyond max_ongoing_requests; more are "
                    "refused at once with 503 and Retry-After (back-pressure: a saturated "
                    "replica answers quickly instead of letting the queue, and the tail, grow)")
    retry_after_s: int = Field(1, ge=1, le=3600,
                               description="the Retry-After of a 503 for a full queue")
    llm: LLMServeConfig = Field(default_factory=LLMServeConfig,
                                description="chat LLMs only: the generation engine's bounds")


    def scaling_options(self) -> dict[str, object]:
        """Ray Serve's deployment options for these replicas: autoscaling, or a fixed count."""
        if self.autoscaling:
            return {"autoscaling_config": self.autoscaling.model_dump(exclude_none=True)}
        return {"num_replicas": self.num_replicas}


class PromotionConfig(StrictModel):
    """When a newly registered version takes the ``production`` alias (and so, live traffic)."""

    policy: Literal["auto", "manual"] = Field(
        "auto", description="auto: promote when the promotion check passes; manual: alias it "
                            "'canary' and wait for `maas models promote`")
    min_accuracy: float | None = Field(
        None, ge=0.0, le=1.0,
        description="check: held-out accuracy at least this (classifiers)")
    max_regression: float = Field(
        0.01, ge=0.0, description="check: held-out accuracy at most this much below "
                                  "production's (RMSE at most this much above, for regressors; "
                                  "perplexity at most this share above, for chat LLMs)")
