"""Errors carry their outcome: each maas error knows its HTTP status (and OpenAI's ``param``),
and every app maps them to a response in one place, in its own shape."""

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from maas.access import AccessError, Refusal
from maas.config import ConfigError
from maas.data import DataError
from maas.errors import MaasError, field_path
from maas.oip import InferError
from maas.pretrained import PretrainedError
from maas.registry import IntegrityError, ModelNotFound, RegistryError, VersionNotFound
from serve_apps.http import error_response, make_api, validation_error
from serve_apps.openai_types import EmbeddingRequest, openai_error

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("error, status", [
    (VersionNotFound("no version 9"), 404), (ModelNotFound("no model"), 404),
    (IntegrityError("changed"), 503), (RegistryError("cannot be used"), 503),
    (AccessError("bad tenant"), 400), (ConfigError("deploy.yaml", ["x: bad"]), 400),
    (DataError("NaN"), 400), (PretrainedError("no config.json"), 400),
    (Refusal(429, "rate"), 429), (InferError(413, "too big"), 413), (MaasError("?"), 500),
])
def test_every_error_knows_its_status(error, status):
    assert isinstance(error, MaasError) and error.status == status


def test_field_paths_read_as_people_write_them():
    assert field_path(("models", 0, "serve", "max_rows")) == "models[0].serve.max_rows"
    assert field_path(()) == ""


def _errors(model, data) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value.errors()


def test_a_bad_body_is_one_400_naming_each_field_with_the_first_as_param():
    error = validation_error(_errors(EmbeddingRequest, {"model": "", "input": 3}))
    assert error.status == 400 and error.param == "model"
    assert "model: String should have at least 1 character" in error.message
    assert "input" in error.message


def _handled(api, exc) -> tuple[int, dict]:
    handler = api.exception_handlers[type(exc) if type(exc) in api.exception_handlers
                                     else MaasError]
    response = asyncio.run(handler(Request({"type": "http", "headers": []}), exc))
    return response.status_code, json.loads(response.body)


def test_each_app_maps_errors_once_in_its_own_shape():
    oip = make_api("t", "t")
    assert _handled(oip, VersionNotFound("model 'm' has no version 9")) == \
        (404, {"error": "model 'm' has no version 9"})
    assert _handled(oip, HTTPException(405, "Method Not Allowed"))[0] == 405
    invalid = RequestValidationError(_errors(EmbeddingRequest, {"model": "m"}))
    assert _handled(oip, invalid)[0] == 400
    openai = make_api("t", "t", render=openai_error)
    status, body = _handled(openai, InferError(404, "model: 'x' is unknown", param="model"))
    assert status == 404 and body["error"] == {"message": "model: 'x' is unknown",
                                               "type": "not_found_error", "param": "model",
                                               "code": "model_not_found"}
    assert _handled(openai, InferError(404, "file_id: no file", param="file_id"))[1][
        "error"]["code"] == "file_not_found"
    # An unknown field of a request is named as its param, as OpenAI names a bad argument.
    assert _handled(openai, InferError(400, "best_of: extra inputs are not permitted",
                                       param="best_of"))[1]["error"]["param"] == "best_of"
    assert error_response(Refusal(429, "rate", headers={"Retry-After": "2"})).headers[
        "retry-after"] == "2"
