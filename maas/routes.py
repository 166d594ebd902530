"""Every Serve application's name and route, defined once.

    /                     the server app: health, metadata and catalog under /v2, the API
                          docs (/docs, /openapi.json) and a home page at /
    /v2/models/<name>     one app per model (Open Inference Protocol v2)
    /v1                   the OpenAI-compatible app, when a text-embedding model or a
                          language model is served

Serve routes a request to the app with the longest matching prefix, so the server app at ``/``
sees only what no other app claims (e.g. ``/v2/models/<a model not served>``).
"""

from __future__ import annotations

SERVER_APP = "maas-server"  # the server-level app at the root of the URL space
SERVER_ROUTE = "/"
OIP_ROOT = "/v2"  # the Open Inference Protocol's prefix: server routes live below it
MODEL_APP_PREFIX = "model-"  # model apps are found by this prefix (health, docs)
OPENAI_APP = "maas-openai"  # POST /v1/embeddings, for the text-embedding models
OPENAI_ROUTE = "/v1"
# The Serve app the server app had before it moved to "/": a deploy removes it, since it would
# keep answering /v2/... with the old code.
LEGACY_SERVER_APP = "maas"


EXPLAIN = "explain"  # a model's explain route, and the suffix its usage is metered under


def explain_usage_name(model_name: str) -> str:
    """The model name an explanation's usage is counted under (``<name>/explain``)."""
    return f"{model_name}/{EXPLAIN}"


def priced_as(usage_model: str) -> str:
    """The model whose catalog prices a usage row of ``usage_model``: an explanation is
    priced as its model's rows."""
    return usage_model.removesuffix(f"/{EXPLAIN}")


def model_app_name(model_name: str) -> str:
    """The Serve application (and deployment) name of ``model_name``'s app."""
    return f"{MODEL_APP_PREFIX}{model_name}"


def model_route(model_name: str) -> str:
    """The route prefix of ``model_name``'s app: ``/v2/models/<name>``."""
    return f"{OIP_ROOT}/models/{model_name}"


def infer_route(model_name: str) -> str:
    return f"{model_route(model_name)}/infer"


def embeddings_route() -> str:
    return f"{OPENAI_ROUTE}/embeddings"


def chat_route() -> str:
    """OpenAI-compatible chat completions, for the language models (pretrained.task chat)."""
    return f"{OPENAI_ROUTE}/chat/completions"
