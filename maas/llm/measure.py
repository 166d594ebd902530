"""Every variant of a language model scored on the same held-out text, and one chosen.

    python -m jobs.pipeline deploy.yaml     # a model with `pretrained.task: chat` comes here

Per variant: perplexity on ``heldout.txt`` (passages, and conversations rendered with the
model's chat template), how often its greedy next token is fp32's (at every position of the
same text: one forward pass per block, plain ONNX Runtime), its size on disk, and decode speed
with onnxruntime-genai itself (greedy, a fixed number of new tokens, 1 stream and a static
batch of 8) with the time to the first token. A variant whose perplexity is more than
``pretrained.chat.max_perplexity_ratio`` times fp32's, or whose agreement is below
``pretrained.chat.min_token_agreement``, is too lossy; ``optimize.select`` picks among the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import ChatConfig, OptimizeConfig, PretrainedConfig
from maas.llm.convert import LlmError, Source, require_llm_extra, resolve_source, variant_dir
from maas.llm.files import GENAI_CONFIG_FILE, GRAPH_FILE, context_length, size_bytes
from maas.runtime import ort_session
from maas.variants import pick

HELDOUT = Path(__file__).with_name("heldout.txt")
STREAMS = (1, 8)  # decode speed is measured for one stream and a static batch of eight
ROLES = ("user:", "assistant:")


def heldout_blocks(path: Path = HELDOUT) -> list[str | list[dict[str, str]]]:
    """The held-out set: plain passages, and conversations as chat messages."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    blocks = [b.strip() for b in "\n".join(lines).split("\n\n") if b.strip()]
    parsed: list[str | list[dict[str, str]]] = []
    for block in blocks:
        if not block.startswith(ROLES):
            parsed.append(block)
            continue
        parsed.append([{"role": role, "content": text.strip()}
                       for role, _, text in (line.partition(": ") for line in block.splitlines())])
    return parsed


@dataclass(frozen=True)
class HeldOut:
    """The held-out set as the model's tokens, and the prompts decode speed is timed on."""

    token_ids: list[np.ndarray]  # one int64 row per block
    prompts: list[str]  # each conversation's first turn, with the generation prompt


def tokenize(tokenizer: Any, blocks: list[str | list[dict[str, str]]]) -> HeldOut:
    """``blocks`` through the model's own tokenizer and chat template."""
    texts, prompts = [], []
    for block in blocks:
        if isinstance(block, str):
            texts.append(block)
            continue
        texts.append(tokenizer.apply_chat_template(json.dumps(block),
                                                   add_generation_prompt=False))
        prompts.append(tokenizer.apply_chat_template(json.dumps(block[:1]),
                                                     add_generation_prompt=True))
    if len(prompts) < max(STREAMS):
        raise LlmError(f"the held-out set has {len(prompts)} conversations; decode speed "
                       f"needs {max(STREAMS)}")
    return HeldOut([np.asarray(tokenizer.encode(t), dtype=np.int64) for t in texts], prompts)


def _empty_past(session: Any, folder: Path) -> dict[str, np.ndarray]:
    """A zero-length KV cache for every past input of the graph."""
    decoder = json.loads((folder / GENAI_CONFIG_FILE).read_text())["model"]["decoder"]
    shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])
    return {i.name: np.zeros(shape, dtype=np.float32) for i in session.get_inputs()
            if i.name.startswith("past_key_values.")}


def score(folder: Path, token_ids: list[np.ndarray], threads: int
          ) -> tuple[float, list[np.ndarray]]:
    """(perplexity over every predicted token, the argmax token at every position of each
    block): one forward pass per block with an empty KV cache gives every position's logits."""
    session = ort_session(folder / GRAPH_FILE, threads=threads)
    past = _empty_past(session, folder)
    nll, count, argmaxes = 0.0, 0, []
    for ids in token_ids:
        feeds = {"input_ids": ids[None, :], "attention_mask": np.ones((1, ids.size), np.int64),
                 **past}
        logits = session.run(["logits"], feeds)[0][0].astype(np.float64)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        nll -= float(log_probs[np.arange(ids.size - 1), ids[1:]].sum())
        count += ids.size - 1
        argmaxes.append(logits[:-1].argmax(axis=-1))
    return float(np.exp(nll / count)), argmaxes


def open_model(folder: Path, threads: int) -> Any:
    """An onnxruntime-genai model of ``folder`` on ``threads`` intra-op threads."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    return og.Model(config)


def decode_speed(model: Any, tokenizer: Any, prompts: list[str], streams: int,
                 new_tokens: int) -> tuple[float, float]:
    """(tokens per second over all streams after the first token, ms to the first token) of
    greedy decoding ``new_tokens`` tokens for each of ``streams`` prompts as one batch."""
    import onnxruntime_genai as og

    tokens = tokenizer.encode_batch(prompts[:streams])
    length = tokens.as_numpy().shape[-1]
    params = og.GeneratorParams(model)
    # min_length holds off the end-of-sequence token: every run decodes the same count.
    params.set_search_options(max_length=length + new_tokens, min_length=length + new_tokens,
                              batch_size=streams, do_sample=False)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(tokens)
    generator.generate_next_token()
    first = time.perf_counter()
    steps = 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    elapsed = time.perf_counter() - first
    return streams * steps / elapsed, (first - started) * 1000.0


@dataclass(frozen=True)
class LlmVariant:
    """One built precision of the model, measured on the held-out set."""

    name: str  # "fp32", "int8" or "int4"
    folder: Path  # its built files (maas.llm.files)
    size_bytes: int
    perplexity: float
    perplexity_ratio: float  # to fp32's
    agreement: float  # share of positions whose greedy next token is fp32's
    tokens_per_s: dict[int, float]  # streams -> decode tokens per second, all streams
    ttft_ms: float  # one stream: prompt in, first token out
    build_s: float  # building it (or finding it in the cache)
    cached: bool

    def metrics(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "perplexity_ratio": self.perplexity_ratio,
                "token_agreement": self.agreement, "size_bytes": float(self.size_bytes),
                "ttft_ms": self.ttft_ms, "build_s": self.build_s,
                **{f"tokens_per_s_{s}": t for s, t in self.tokens_per_s.items()}}

    def cells(self) -> dict[str, str]:
        """The variants table's columns for this variant."""
        return {"perplexity": f"{self.perplexity:.3f}", "vs fp32": f"{self.perplexity_ratio:.3f}",
                "agreement": f"{self.agreement:.3f}", "size MB": f"{self.size_bytes / 2**20:.0f}",
                **{f"tok/s x{s}": f"{t:.0f}" for s, t in self.tokens_per_s.items()},
                "TTFT ms": f"{self.ttft_ms:.0f}",
                "build s": f"{self.build_s:.1f}" + (" (cached)" if self.cached else "")}


def measure_variant(name: str, folder: Path, build_s: float, cached: bool, held: HeldOut,
                    reference: tuple[float, list[np.ndarray]] | None, new_tokens: int,
                    threads: int) -> tuple[LlmVariant, list[np.ndarray]]:
    """``folder`` scored against fp32's ``reference`` (None: this is fp32) and timed; the
    variant, and its argmax tokens."""
    perplexity, argmaxes = score(folder, held.token_ids, threads)
    base_perplexity, base_argmaxes = reference or (perplexity, argmaxes)
    same = sum(int((a == b).sum()) for a, b in zip(argmaxes, base_argmaxes))
    total = sum(a.size for a in argmaxes)
    import onnxruntime_genai as og

    model = open_model(folder, threads)
    tokenizer = og.Tokenizer(model)
    decode_speed(model, tokenizer, held.prompts, 1, 4)  # warm-up: first-call allocations
    speed: dict[int, float] = {}
    ttft = float("inf")
    for streams in STREAMS:
        # Best of two: the runs are short and the machine shared; the better is the truer.
        runs = [decode_speed(model, tokenizer, held.prompts, streams, new_tokens)
                for _ in range(2)]
        speed[streams] = max(r[0] for r in runs)
        if streams == 1:
            ttft = min(r[1] for r in runs)
    return LlmVariant(name, folder, size_bytes(folder), perplexity,
                      perplexity / base_perplexity, same / total, speed, ttft, build_s,
                      cached), argmaxes


def gate_of(cfg: PretrainedConfig) -> ChatConfig:
    """The gate ``cfg`` sets (its defaults when ``pretrained.chat`` is unset)."""
    return cfg.chat or ChatConfig()


def eligible(chat: ChatConfig) -> Callable[[LlmVariant], bool]:
    """The quality gate of ``chat``: close enough to fp32 to be served."""
    return lambda v: (v.perplexity_ratio <= chat.max_perplexity_ratio
                      and v.agreement >= chat.min_token_agreement)


def choose(variants: list[LlmVariant], chat: ChatConfig, policy: str) -> LlmVariant:
    """Among the variants that pass the gate, the fastest (decode tokens per second at one
    stream: what one user waits on) or the smallest."""
    chosen = pick(variants, policy, eligible(chat), lambda v: -v.tokens_per_s[1])
    if chosen is None:
        shown = ", ".join(f"{v.name} perplexity x{v.perplexity_ratio:.3f} agreement "
                          f"{v.agreement:.3f}" for v in variants)
        raise LlmError(f"no variant passes the gate (pretrained.chat.max_perplexity_ratio "
                       f"{chat.max_perplexity_ratio}, min_token_agreement "
                       f"{chat.min_token_agreement}): {shown}; loosen it, or drop the variants")
    return chosen


@dataclass(frozen=True)
class Built:
    """A language model made servable: every variant measured, one chosen."""

    source: Source
    context_length: int
    blocks: int  # held-out blocks scored
    tokens: int  # held-out tokens scored
    variants: list[LlmVariant]
    chosen: LlmVariant


def build(cfg: PretrainedConfig, optimize: OptimizeConfig, cache: Path,
          threads: int = 1) -> Built:
    """Build (or find in ``cache``) fp32 and every ``optimize.variants`` precision of
    ``cfg.model``, measure each on the held-out set, choose one by ``optimize.select``."""
    import onnxruntime_genai as og

    require_llm_extra()
    chat = gate_of(cfg)
    source = resolve_source(cfg.model)
    variants: list[LlmVariant] = []
    reference: tuple[float, list[np.ndarray]] | None = None
    held: HeldOut | None = None
    for name in ["fp32", *optimize.variants]:
        started = time.perf_counter()
        folder, cached = variant_dir(source, name, cache)
        build_s = time.perf_counter() - started
        if held is None:  # tokenized once, by fp32's tokenizer: every variant sees the same ids
            held = tokenize(og.Tokenizer(og.Model(str(folder))), heldout_blocks())
        variant, argmaxes = measure_variant(name, folder, build_s, cached, held, reference,
                                            chat.new_tokens, threads)
        if reference is None:
            reference = (variant.perplexity, argmaxes)
        variants.append(variant)
    assert held is not None
    fp32 = variants[0]
    if fp32.perplexity > chat.max_perplexity:
        raise LlmError(f"{cfg.model}: fp32 has perplexity {fp32.perplexity:.1f} on the held-out "
                       f"set (pretrained.chat.max_perplexity {chat.max_perplexity}); the "
                       f"conversion does not compute what the model does, so nothing is "
                       f"registered")
    return Built(source, context_length(fp32.folder), len(held.token_ids),
                 sum(int(ids.size) for ids in held.token_ids), variants,
                 choose(variants, chat, optimize.select.policy))
