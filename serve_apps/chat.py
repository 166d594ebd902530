"""OpenAI's chat and completions answers, rendered from an LLM replica's chunks: one JSON
body, or server-sent events (``data: {...}`` per chunk, then ``data: [DONE]``).

The /v1 app (serve_apps.embeddings) reads the first chunk before it answers, so a refusal
(401, 403, 429, a 400 naming the field) is a plain HTTP error even for ``stream: true``; an
error after the stream started can only be told in the stream, as OpenAI does.
"""

import json
import time
import uuid
from typing import Any, AsyncIterator

from serve_apps.chat_types import (AssistantMessage, ChatChoice, ChatCompletion,
                                   ChatCompletionChunk, ChatRequest, ChoiceLogprobs, Chunk,
                                   ChunkChoice, Completion, CompletionChoice, CompletionRequest,
                                   CompletionUsage, Delta, LegacyLogprobs)


def _usage(chunk: Chunk) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=chunk.prompt_tokens,
                           completion_tokens=chunk.completion_tokens,
                           total_tokens=chunk.prompt_tokens + chunk.completion_tokens)


def _legacy(chunks: list[Chunk], offset: int) -> LegacyLogprobs:
    logprobs = [lp for chunk in chunks for lp in chunk.logprobs]
    offsets, at = [], offset
    for lp in logprobs:
        offsets.append(at)
        at += len(lp.token)
    return LegacyLogprobs(tokens=[lp.token for lp in logprobs],
                          token_logprobs=[lp.logprob for lp in logprobs],
                          top_logprobs=[{t.token: t.logprob for t in lp.top_logprobs}
                                        for lp in logprobs], text_offset=offsets)


class Rendering:
    """One request's answer in OpenAI's shapes: its id, creation time and model name."""

    def __init__(self, body: ChatRequest | CompletionRequest, name: str):
        self.body = body
        self.chat = isinstance(body, ChatRequest)
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.name = name

    def model(self, chunk: Chunk) -> str:
        return f"{self.name}@{chunk.version}"

    def whole(self, chunks: list[Chunk]) -> ChatCompletion | Completion:
        """The non-streamed answer."""
        last = chunks[-1]
        text = "".join(chunk.text for chunk in chunks)
        reason = last.finish_reason or "stop"
        if self.chat:
            logprobs = (ChoiceLogprobs(content=[lp for c in chunks for lp in c.logprobs])
                        if self.body.logprobs else None)
            return ChatCompletion(id=self.id, created=self.created, model=self.model(last),
                                  choices=[ChatChoice(message=AssistantMessage(content=text),
                                                      finish_reason=reason, logprobs=logprobs)],
                                  usage=_usage(last))
        logprobs = _legacy(chunks, 0) if self.body.logprobs is not None else None
        return Completion(id=self.id, created=self.created, model=self.model(last),
                          choices=[CompletionChoice(text=text, finish_reason=reason,
                                                    logprobs=logprobs)], usage=_usage(last))

    def _event(self, chunk: Chunk, first: bool, offset: int) -> Any:
        reason = chunk.finish_reason
        if self.chat:
            logprobs = ChoiceLogprobs(content=chunk.logprobs) if self.body.logprobs else None
            delta = Delta(role="assistant" if first else None, content=chunk.text)
            return ChatCompletionChunk(id=self.id, created=self.created, model=self.model(chunk),
                                       choices=[ChunkChoice(delta=delta, finish_reason=reason,
                                                            logprobs=logprobs)])
        logprobs = _legacy([chunk], offset) if self.body.logprobs is not None else None
        return Completion(id=self.id, created=self.created, model=self.model(chunk),
                          choices=[CompletionChoice(text=chunk.text, finish_reason=reason,
                                                    logprobs=logprobs)])

    def _usage_event(self, last: Chunk) -> Any:
        kind = ChatCompletionChunk if self.chat else Completion
        return kind(id=self.id, created=self.created, model=self.model(last), choices=[],
                    usage=_usage(last))

    async def events(self, first: Chunk, rest: AsyncIterator[Any]) -> AsyncIterator[str]:
        """``data:`` lines for ``first`` and every chunk after it, the usage chunk when
        ``stream_options.include_usage`` asks for it, then ``[DONE]``."""
        chunk, offset, is_first, last = first, 0, True, first
        while chunk is not None:
            if not isinstance(chunk, Chunk):  # the replica failed after the stream started
                error = {"error": {"message": chunk.message, "type": "server_error"}}
                yield f"data: {json.dumps(error)}\n\n"
                return
            yield f"data: {self._event(chunk, is_first, offset).model_dump_json()}\n\n"
            offset += len(chunk.text)
            is_first, last = False, chunk
            chunk = await anext(rest, None)
        options = self.body.stream_options
        if options is not None and options.include_usage:
            yield f"data: {self._usage_event(last).model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
