"""OpenAI's request and response bodies, as far as maas answers them (``/v1``).

Reference: https://platform.openai.com/docs/api-reference/embeddings and its error object
(``{"error": {"message", "type", "param", "code"}}``), which the ``openai`` client reads.
"""

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from maas.errors import MaasError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 408: "invalid_request_error",
               411: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable_error"}


FILE_PARAMS = ("file_id", "training_file", "validation_file")  # 404s of /v1/files and jobs


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, as far as a sentence embedder can answer it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="a model name, or <name>@<version>")
    input: str | list[str] = Field(description="one text, or a list of texts")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes")
    dimensions: int | None = Field(None, ge=1, description="must be the model's own, if sent")
    user: str | None = Field(None, description="accepted for compatibility; not stored")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32 bytes


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCardOpenAI(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "maas"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCardOpenAI]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def openai_error(error: MaasError) -> JSONResponse:
    """A refusal in OpenAI's shape; ``param`` is what the error says is at fault."""
    param = error.param
    detail = OpenAIErrorDetail(
        message=error.message, type=ERROR_TYPES.get(error.status, "server_error"), param=param,
        code=None if error.status != 404 else "file_not_found" if param in FILE_PARAMS else
        "model_not_found" if param in (None, "model") else None)
    return JSONResponse(OpenAIError(error=detail).model_dump(), status_code=error.status,
                        headers=error.headers)
