"""OpenAI's chat and completions bodies, as far as maas answers them (``/v1``), and the chunks
an LLM replica streams back to the ``/v1`` app over a DeploymentHandle.

References: https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/api-reference/completions/create. A field maas does not
support is refused with a 400 naming it (``extra="forbid"``), except those OpenAI documents as
hints (``user``, ``metadata``, ``store``), which are accepted and not stored.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "developer", "user", "assistant"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="developer is read as system")
    content: str | list[TextPart] = Field(description="text, or a list of text parts")
    name: str | None = Field(None, description="accepted; not shown to the model")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else \
            "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, description="a last chunk with usage and no choices")


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema object")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema: {name, schema}")
        return self


class SamplingFields(BaseModel):
    """What chat and completions requests share."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="a chat model's name, or <name>@<version>")
    max_tokens: int | None = Field(None, ge=1, description="completion tokens at most")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="maas extension (as vLLM): 0 = all tokens")
    n: int = Field(1, ge=1, le=1, description="choices per request: only 1")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="reproducible sampling")
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences")
    stream: bool = Field(False, description="server-sent events, one chunk per piece of text")
    stream_options: StreamOptions | None = None
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="only 0 is supported")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="only 0 is supported")
    user: str | None = Field(None, description="accepted for compatibility; not stored")

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="wins over max_tokens")
    logprobs: bool = Field(False, description="log-probabilities of the generated tokens")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="alternatives per token")
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = Field(None, description="accepted; not stored")
    store: bool | None = Field(None, description="accepted; nothing is stored")

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="one prompt (a list of one is accepted)")
    logprobs: int | None = Field(None, ge=0, le=5, description="top alternatives per token")
    echo: Literal[False] = Field(False, description="only false is supported")

    def token_limit(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else 16  # OpenAI's default


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Chunk(BaseModel):
    """What an LLM replica streams to the /v1 app: text and token counts so far."""

    text: str = ""
    tokens: int = 0  # completion tokens in this chunk
    logprobs: list[TokenLogprobOut] = Field(default_factory=list)
    finish_reason: Literal["stop", "length", "error"] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    version: str = ""
    first_step: int = -1
    last_step: int = -1


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: LegacyLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
