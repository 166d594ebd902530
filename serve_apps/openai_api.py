"""The FastAPI app of ``/v1``, shared by the modules whose routes it carries: embeddings,
chat and completions (serve_apps.embeddings), files and fine-tuning jobs
(serve_apps.finetuning_routes). OpenAI's clients read errors as ``{"error": {"message":
...}}``: every route answers in that shape."""

from serve_apps.http import make_api
from serve_apps.openai_types import ERROR_TYPES, OpenAIError, openai_error

api = make_api(title="maas OpenAI-compatible API",
               description="Embeddings, chat and completions, files and fine-tuning jobs, as "
                           "OpenAI's API has them",
               render=openai_error)
ERRORS = {status: {"model": OpenAIError} for status in ERROR_TYPES}
