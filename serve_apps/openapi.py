"""One OpenAPI document for the whole server: every route of every app, as ``/openapi.json``
and ``/docs`` at the server root serve it.

Each app keeps its own document (``/v2/models/<name>/openapi.json``, ``/v1/openapi.json``);
this joins them under their route prefixes, one tag per app, with operation ids made unique
per model. ``docs/generate.py`` renders the HTTP reference from the same function.
"""

import copy
from typing import Any

from fastapi import FastAPI

import maas
from maas.routes import OPENAI_ROUTE, model_route

Document = dict[str, Any]
SERVER_TAG = "server"
SCHEME = "maasKey"
OPENAI_TAG = "OpenAI-compatible"


def _add(into: Document, part: Document, prefix: str, tag: str, op_prefix: str) -> None:
    """``part``'s paths under ``prefix``, tagged ``tag``; its schemas into ``into``'s."""
    for path, operations in part.get("paths", {}).items():
        full = prefix if path == "/" and prefix else f"{prefix}{path}"
        entry = into["paths"].setdefault(full, {})
        for method, operation in operations.items():
            operation = copy.deepcopy(operation)
            operation["tags"] = [tag]
            if "operationId" in operation and op_prefix:
                operation["operationId"] = f"{op_prefix}_{operation['operationId']}"
            entry[method] = operation
    schemas = into.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in part.get("components", {}).get("schemas", {}).items():
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"OpenAPI schema {name!r} differs between apps; rename one")
        schemas[name] = schema


def _require_keys(document: Document) -> None:
    """Declare maas's bearer keys, needed by every operation that can answer 401 (so that
    Swagger UI offers "Authorize" and sends the key)."""
    document["components"]["securitySchemes"] = {SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "a maas API key: `maas keys create` or `maas quickstart`"}}
    for operations in document["paths"].values():
        for operation in operations.values():
            if "401" in operation.get("responses", {}):
                operation["security"] = [{SCHEME: []}]


def server_document(server: FastAPI, model_api: FastAPI, openai_api: FastAPI,
                    models: list[str], openai: bool, keys: bool = False,
                    chat_api: FastAPI | None = None, chat_models: tuple[str, ...] = ()
                    ) -> Document:
    """The server app's routes, each of ``models``' routes under ``/v2/models/<name>`` (a chat
    model's from ``chat_api``), and (``openai``) the OpenAI-compatible routes under ``/v1``;
    ``keys``: access is on, and the routes that check a key say so."""
    own = server.openapi()
    document: Document = {
        "openapi": own["openapi"],
        "info": {"title": "maas", "version": maas.__version__,
                 "description": "Every route of this maas server: the Open Inference Protocol "
                                "v2 server and model routes, the model catalog, and the "
                                "OpenAI-compatible routes. Send `Authorization: Bearer <key>` "
                                "where access is on (`maas keys create`, `maas quickstart`)."},
        "paths": {},
        "tags": [{"name": SERVER_TAG, "description": "health, metadata, catalog, docs"}],
    }
    _add(document, own, "", SERVER_TAG, "")
    for name in models:
        chat = name in chat_models and chat_api is not None
        tag = f"model {name}"
        protocol = "Triton's generate extension" if chat else "Open Inference Protocol v2"
        document["tags"].append({"name": tag, "description": f"{model_route(name)}: {protocol}"})
        _add(document, (chat_api if chat else model_api).openapi(), model_route(name), tag,
             name.replace("-", "_"))
    if openai:
        document["tags"].append({"name": OPENAI_TAG, "description": f"{OPENAI_ROUTE}: OpenAI's "
                                                                    f"embeddings, chat and "
                                                                    f"completions API"})
        _add(document, openai_api.openapi(), OPENAI_ROUTE, OPENAI_TAG, "openai")
    if keys:
        _require_keys(document)
    return document
