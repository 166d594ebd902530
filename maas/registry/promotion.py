"""The promotion check: whether a new version may take ``production`` (and live traffic).

    models[].promotion: {policy: auto, min_accuracy: 0.95, max_regression: 0.01}
"""

from __future__ import annotations

from dataclasses import dataclass

from maas.config import PromotionConfig
from maas.registry.versions import VersionInfo


@dataclass(frozen=True)
class PromotionDecision:
    passed: bool
    reason: str


def check_promotion(promotion: PromotionConfig, candidate: VersionInfo,
                    production: VersionInfo | None) -> PromotionDecision:
    """Whether ``candidate`` may replace ``production`` under ``promotion``'s thresholds."""
    metrics = candidate.metrics
    if "min_cosine" in metrics:  # an embedder: registered only at pretrained.min_cosine or above
        return PromotionDecision(True, f"min cosine {metrics['min_cosine']:.4f} with the "
                                       f"pretrained model's own embeddings")
    if "perplexity_ratio" in metrics:  # a chat LLM: registered only within pretrained.chat's gate
        return _check_perplexity(promotion, candidate, production)
    if "held_out_accuracy" in metrics:
        return _check_accuracy(promotion, metrics["held_out_accuracy"], production)
    rmse = metrics.get("held_out_rmse")
    current = None if production is None else production.metrics.get("held_out_rmse")
    if rmse is not None and current is not None and rmse > current + promotion.max_regression:
        return PromotionDecision(False, f"held-out RMSE {rmse:.4f} is more than "
                                        f"promotion.max_regression {promotion.max_regression} "
                                        f"above production version {production.version}'s "
                                        f"{current:.4f}")
    return PromotionDecision(True, "held-out RMSE " + ("n/a" if rmse is None else f"{rmse:.4f}"))


def _check_accuracy(promotion: PromotionConfig, accuracy: float,
                    production: VersionInfo | None) -> PromotionDecision:
    if promotion.min_accuracy is not None and accuracy < promotion.min_accuracy:
        return PromotionDecision(False, f"held-out accuracy {accuracy:.4f} < "
                                        f"promotion.min_accuracy {promotion.min_accuracy}")
    current = None if production is None else production.metrics.get("held_out_accuracy")
    if current is not None and accuracy < current - promotion.max_regression:
        return PromotionDecision(False, f"held-out accuracy {accuracy:.4f} is more than "
                                        f"promotion.max_regression {promotion.max_regression} "
                                        f"below production version {production.version}'s "
                                        f"{current:.4f}")
    return PromotionDecision(True, f"held-out accuracy {accuracy:.4f}")


def _check_perplexity(promotion: PromotionConfig, candidate: VersionInfo,
                      production: VersionInfo | None) -> PromotionDecision:
    """A language model may not be more than ``max_regression`` (relative) more perplexed on
    the held-out text than the production version."""
    metrics = candidate.metrics
    perplexity = metrics["perplexity"]
    current = None if production is None else production.metrics.get("perplexity")
    if current is not None and perplexity > current * (1.0 + promotion.max_regression):
        return PromotionDecision(False, f"held-out perplexity {perplexity:.3f} is more than "
                                        f"promotion.max_regression {promotion.max_regression} "
                                        f"(relative) above production version "
                                        f"{production.version}'s {current:.3f}")
    return PromotionDecision(True, f"held-out perplexity {perplexity:.3f} (x"
                                   f"{metrics['perplexity_ratio']:.3f} of fp32), next-token "
                                   f"agreement {metrics.get('token_agreement', 0.0):.3f}")
