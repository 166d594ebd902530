"""The server's one OpenAPI document: every app's routes under their prefixes, one tag per
app, operation ids unique across models, and no two apps' schemas silently merged."""

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from serve_apps import embeddings, inference, server
from serve_apps.openapi import OPENAI_TAG, SCHEME, SERVER_TAG, server_document

pytestmark = pytest.mark.unit


def test_models_and_the_openai_app_join_the_server_routes():
    document = server_document(server.api, inference.api, embeddings.api,
                               ["digits", "digits-cnn"], openai=True)
    tags = [t["name"] for t in document["tags"]]
    assert tags == [SERVER_TAG, "model digits", "model digits-cnn", OPENAI_TAG]
    paths = document["paths"]
    assert paths["/v2/models/digits-cnn/infer"]["post"]["tags"] == ["model digits-cnn"]
    assert paths["/v2/models/digits"]["get"]["tags"] == ["model digits"]  # the app's "/"
    assert paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/EmbeddingRequest"}
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for schema in ("InferenceRequest", "EmbeddingRequest", "ModelCard"):
        assert schema in document["components"]["schemas"]
    assert "/v1/embeddings" not in server_document(server.api, inference.api, embeddings.api,
                                                   ["digits"], openai=False)["paths"]


def test_with_access_on_the_routes_that_check_a_key_declare_it():
    document = server_document(server.api, inference.api, embeddings.api, ["digits"],
                               openai=True, keys=True)
    assert document["components"]["securitySchemes"][SCHEME]["scheme"] == "bearer"
    paths = document["paths"]
    for path, method in (("/v2/models/digits/infer", "post"), ("/v2/catalog", "get"),
                         ("/v1/embeddings", "post")):
        assert paths[path][method]["security"] == [{SCHEME: []}]
    for path in ("/v2/health/ready", "/v2/models/digits/ready", "/"):
        assert "security" not in paths[path]["get"]


def test_two_apps_with_different_schemas_of_one_name_are_refused():
    def app_with(field_type: type) -> FastAPI:
        api = FastAPI()
        body = type("Thing", (BaseModel,), {"__annotations__": {"x": field_type}})

        @api.post("/thing")
        def thing(item: body) -> dict:
            return {}

        return api

    with pytest.raises(ValueError, match="'Thing' differs between apps"):
        server_document(app_with(int), app_with(str), embeddings.api, ["m"], openai=False)


def test_a_chat_model_documents_its_generate_routes_and_v1_its_chat():
    from serve_apps import llm

    document = server_document(server.api, inference.api, embeddings.api, ["digits", "chat"],
                               openai=True, chat_api=llm.api, chat_models=("chat",))
    paths = document["paths"]
    assert "/v2/models/chat/generate_stream" in paths and "/v2/models/chat/infer" not in paths
    assert "/v2/models/digits/infer" in paths
    chat = paths["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
