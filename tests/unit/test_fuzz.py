"""Property tests (hypothesis): whatever JSON arrives, tensor decoding and config parsing
answer with a value or with their own error naming the field, never anything else."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from maas.config import ConfigError, DeployConfig, parse_config
from maas.oip import InferenceRequest, InferError, TensorSpec, decode_input

SPEC = TensorSpec(name="input", datatype="FP32", shape=[-1, 4])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=40)
shapes = st.lists(st.integers(-3, 6), max_size=4)
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "fp32", ""])
numbers = st.lists(st.floats(-1e6, 1e6, width=32), max_size=30)
tensors = st.fixed_dictionaries({
    "name": st.sampled_from(["input", "other"]), "shape": st.one_of(shapes, json_values),
    "datatype": st.one_of(datatypes, json_values),
    "data": st.one_of(numbers, st.lists(numbers, max_size=4), json_values)})
bodies = st.one_of(json_values, st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors, max_size=3), json_values)},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values}))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_any_json_body_decodes_or_is_refused_naming_the_field(body):
    try:
        text = json.dumps(body)
    except ValueError:
        return  # not representable as JSON: no client can send it
    try:
        request = InferenceRequest.model_validate_json(text)
    except ValidationError as exc:  # the server's 400, its message built from these
        assert all(error["loc"] or error["type"] for error in exc.errors())
        return
    for index, tensor in enumerate(request.inputs):
        try:
            array = decode_input(tensor, SPEC, index, max_rows=8)
        except InferError as exc:
            assert exc.status == 400 and exc.message.startswith(f"inputs[{index}]"), exc.message
            continue
        assert array.dtype == np.float32 and array.ndim == 2 and array.shape[1] == 4
        assert array.shape[0] <= 8 and np.isfinite(array).all()


sections = st.sampled_from(["state_dir", "cluster", "tracking", "registry", "access", "models",
                            "bogus"])
model_keys = st.sampled_from(["name", "data", "model", "train", "export", "optimize", "serve",
                              "promotion", "agreement", "catalog", "extra"])
models = st.lists(st.one_of(json_values, st.dictionaries(model_keys, json_values, max_size=5)),
                  max_size=3)
configs = st.one_of(json_values, st.dictionaries(
    sections, st.one_of(json_values, models), max_size=6))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_yaml_document_parses_or_lists_its_problems(data):
    try:
        cfg = parse_config(data, source="fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(problem.strip() for problem in exc.problems)
        assert str(exc).startswith("fuzz.yaml:")
        return
    assert isinstance(cfg, DeployConfig) and cfg.models


@pytest.mark.parametrize("data", [{"models": [{"name": "ok"}]}, {"models": []}, [], None, "x"])
def test_the_fuzzed_functions_see_both_outcomes(data):
    """The properties above are not vacuous: valid and invalid documents both occur."""
    try:
        parse_config(data, source="fuzz.yaml")
    except ConfigError:
        assert data != {"models": [{"name": "ok"}]}
