"""Typed serve-app args end to end: built from deploy.yaml by one function per app, written
into the serve config as plain YAML, and turned back into the same typed args by Serve's own
builder call (what `serve deploy` and KubeRay do with ``import_path`` and ``args``)."""

from pathlib import Path

import pytest
import yaml

from maas.app_args import (EmbeddingsArgs, InferenceArgs, ServerArgs, embeddings_args,
                           inference_args, server_args)
from maas.config import load_config
from maas.serve_config import serve_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "deploy.yaml")


def test_each_app_gets_its_section_as_written(cfg):
    digits = cfg.model("digits")
    args = inference_args(cfg, digits)
    assert args.serve == digits.serve and args.agreement == digits.agreement
    assert args.name == "digits" and args.version is None
    server = server_args(cfg)
    assert [e.name for e in server.catalog] == ["digits", "digits-cnn", "minilm", "smollm2"]
    assert server.embedding_models == ["minilm"]
    assert embeddings_args(cfg).models == {"minilm": cfg.model("minilm").serve.max_rows}
    assert embeddings_args(cfg).chat_models == ["smollm2"]


def test_serve_builds_the_typed_args_back_from_the_config_file(cfg):
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve_apps import embeddings, inference, llm, server

    builders = {"serve_apps.server:build_app": (server.build_app, ServerArgs),
                "serve_apps.inference:build_app": (inference.build_app, InferenceArgs),
                "serve_apps.llm:build_app": (llm.build_app, InferenceArgs),
                "serve_apps.embeddings:build_app": (embeddings.build_app, EmbeddingsArgs)}
    document = yaml.safe_load(yaml.safe_dump(serve_config(cfg)))  # as `serve deploy` reads it
    for app in document["applications"]:
        build, typed = builders[app["import_path"]]
        built = call_user_app_builder_with_args_if_necessary(build, app["args"])
        (bound,) = built._bound_deployment.init_args
        assert isinstance(bound, typed) and bound.model_dump(mode="json") == app["args"]
    digits = next(a for a in document["applications"] if a["name"] == "model-digits")
    assert digits["args"]["serve"]["batching"] == {"max_batch_size": 16, "wait_ms": 0.0,
                                                  "inline_below_ms": 0.5}


def test_bad_args_in_a_hand_edited_config_are_refused_by_name(cfg):
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve_apps import inference

    args = inference_args(cfg, cfg.model("digits")).model_dump(mode="json")
    args["serve"]["cpus_per_replica"] = 0
    with pytest.raises(ValidationError, match="serve.cpus_per_replica"):
        call_user_app_builder_with_args_if_necessary(inference.build_app, args)
