"""What an LLM replica does with one generation, apart from HTTP: load versions, turn a
request into a prompt and sampling settings, stream the engine's outputs as chunks.

serve_apps.llm (the model's app) calls :func:`prepare` and :func:`chunks`; the protocol at the
edge (OpenAI's shapes in serve_apps.chat, Triton's generate extension in serve_apps.llm) only
renders what comes out.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from maas.config.serve import LLMServeConfig
from maas.errors import MaasError
from maas.llm.chat import ChatModel
from maas.llm.engine import Constraint, StepOutput
from maas.llm.files import KIND, materialize
from maas.llm.sampling import SamplingParams
from maas.llm.sequence import check_fits
from maas.llm.stream import generate
from maas.registry import RegistryError, RegistryView, VersionInfo
from serve_apps import REPLICA_LOG
from serve_apps.chat_types import (ChatRequest, Chunk, CompletionRequest, TokenLogprobOut,
                                   TopLogprob)

log = logging.getLogger(REPLICA_LOG)


@dataclass
class LoadedLLM:
    """One verified version: its files on local disk, the engine, grammars on first use."""

    info: VersionInfo
    model: ChatModel
    _guidance: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def guidance(self):
        from maas.llm.guidance import Guidance

        with self._lock:
            if self._guidance is None:
                engine = self.model.engine
                self._guidance = Guidance(self.model.tokenizer, engine.cache.shape.eos_token_ids,
                                          vocab_size=engine.cache.shape.vocab_size)
        return self._guidance


def load_llm(registry: RegistryView, name: str, number: int, root: Path, settings: LLMServeConfig,
             threads: int, spin: bool = False) -> LoadedLLM:
    """Fetch, verify and open ``number`` of ``name`` into an engine (RegistryError if it is
    not a chat LLM)."""
    info = registry.get(name, number)
    if info.kind != KIND:
        raise RegistryError(f"model {name!r} version {number} is of kind {info.kind!r}, not a "
                            f"chat LLM ({KIND!r}); deploy it without pretrained.task: chat")
    folder = materialize(registry, info, root)
    model = ChatModel.open(folder, settings, threads, spin)
    log.info("loaded LLM %s version %s (%s, sha256 %s, context %d)", name, number, info.variant,
             info.sha256, model.context_length)
    return LoadedLLM(info=info, model=model)


@dataclass(frozen=True)
class Prepared:
    """A request made ready for the engine."""

    prompt: list[int]
    params: SamplingParams
    constraint: Constraint | None


def _max_tokens(asked: int | None, prompt: int, context: int, default: int) -> int:
    if asked is None:
        left = context - prompt
        if left < 1:
            raise MaasError(f"the prompt has {prompt} tokens, the whole context length of "
                            f"{context}; shorten it", status=400, param="messages")
        return min(default, left)
    check_fits(prompt, asked, context)  # before tokens are reserved for it
    return asked


def prepare(loaded: LoadedLLM, body: ChatRequest | CompletionRequest,
            settings: LLMServeConfig) -> Prepared:
    """The prompt's tokens, sampling settings and grammar of ``body`` (400s naming the field)."""
    model = loaded.model
    stops = body.stops()
    if len(stops) > settings.max_stop_sequences or any(not s for s in stops):
        raise MaasError(f"stop: up to {settings.max_stop_sequences} non-empty sequences, got "
                        f"{list(stops)}", status=400, param="stop")
    constraint = None
    if isinstance(body, ChatRequest):
        prompt = model.chat_prompt([(m.role, m.text()) for m in body.messages])
        logprobs, top = body.logprobs, body.top_logprobs or 0
        if top and not logprobs:
            raise MaasError("top_logprobs: needs logprobs: true", status=400,
                            param="top_logprobs")
        if body.response_format is not None and body.response_format.type != "text":
            guidance = loaded.guidance()
            grammar = guidance.compile(body.response_format.model_dump(by_alias=True,
                                                                       exclude_none=True))
            constraint = guidance.matcher(grammar)
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(texts) != 1:
            raise MaasError(f"prompt: one prompt per request, got {len(texts)}", status=400,
                            param="prompt")
        prompt = model.text_prompt(texts[0])
        logprobs, top = body.logprobs is not None, body.logprobs or 0
    if not prompt:
        raise MaasError("the prompt is empty", status=400,
                        param="messages" if isinstance(body, ChatRequest) else "prompt")
    limit = _max_tokens(body.token_limit(), len(prompt), model.context_length,
                        settings.default_max_tokens)
    params = SamplingParams(max_tokens=limit, temperature=body.temperature, top_p=body.top_p,
                            top_k=body.top_k, seed=body.seed, stop=stops, logprobs=logprobs,
                            top_logprobs=top)
    return Prepared(prompt=prompt, params=params, constraint=constraint)


def _chunk(loaded: LoadedLLM, outputs: list[StepOutput]) -> Chunk:
    """Several engine outputs that queued up together, as one chunk."""
    last = outputs[-1]
    model = loaded.model
    logprobs = [TokenLogprobOut(token=model.token_text(lp.token_id), logprob=lp.logprob,
                                top_logprobs=[TopLogprob(token=model.token_text(t), logprob=v)
                                              for t, v in lp.top])
                for output in outputs for lp in output.logprobs]
    return Chunk(text="".join(o.text for o in outputs),
                 tokens=sum(len(o.token_ids) for o in outputs), logprobs=logprobs,
                 finish_reason=last.finish_reason, prompt_tokens=last.prompt_tokens,
                 completion_tokens=last.completion_tokens, version=str(loaded.info.version),
                 first_step=last.first_step, last_step=last.last_step)


async def chunks(loaded: LoadedLLM, prepared: Prepared) -> AsyncIterator[Chunk]:
    """The engine's outputs as chunks, merging those that queued while the consumer was
    busy (a chunk per token would cost a Ray message per token across apps)."""
    async for outputs in generate(loaded.model.engine, prepared.prompt, prepared.params,
                                  prepared.constraint):
        yield _chunk(loaded, outputs)
