"""``models[].pretrained.chat``: a pretrained language model's quality gate and how its decode
speed is measured (``pretrained.task: chat``)."""

from __future__ import annotations

from pydantic import Field

from maas.config.base import StrictModel

# What the onnxruntime-genai builder makes for the CPU besides fp32 (always measured): int8
# and int4 quantize the MatMul weights blockwise.
LLM_VARIANTS = ("int8", "int4")


class ChatConfig(StrictModel):
    """The quality gate every LLM variant must pass against fp32 on the held-out text shipped
    with maas (maas/llm/heldout.txt), and the decode-speed measurement."""

    # Measured on SmolLM2-135M-Instruct (38 texts, 1617 tokens): int8 x1.03 and agreement
    # 0.96, int4 x1.16 and 0.59 (its tied embedding table is int4 too), and int4 still answers
    # the smoke question right.
    max_perplexity_ratio: float = Field(
        1.25, ge=1.0, le=10.0,
        description="a variant is registered only if its perplexity on the held-out text is at "
                    "most this many times fp32's")
    min_token_agreement: float = Field(
        0.5, ge=0.0, le=1.0,
        description="a variant is registered only if its greedy next token is fp32's at least "
                    "this share of the held-out positions")
    max_perplexity: float = Field(
        100.0, gt=1.0,
        description="fp32 must reach this perplexity on the held-out text, or the conversion "
                    "is wrong and nothing is registered")
    new_tokens: int = Field(32, ge=4, le=1024,
                            description="tokens decoded per timed run (greedy, 1 and 8 streams)")
