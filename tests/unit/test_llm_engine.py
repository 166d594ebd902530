"""The generation engine on the real model (SmolLM2-135M int4, built once per session):
answers, continuous batching, cancellation, sampling, stops, logprobs, the context bound."""

import asyncio
import threading
import time
from pathlib import Path

import pytest

from maas.config.serve import LLMServeConfig
from maas.errors import MaasError
from maas.llm.chat import ChatModel
from maas.llm.detok import TextStream
from maas.llm.engine import StepOutput
from maas.llm.sampling import SamplingParams
from maas.llm.stream import generate

pytestmark = pytest.mark.unit
CAPITAL = [("user", "What is the capital of France?")]


@pytest.fixture(scope="module")
def model(llm_int4_dir: Path) -> ChatModel:
    model = ChatModel.open(llm_int4_dir, LLMServeConfig(max_num_seqs=8, context_length=512), 2)
    yield model
    model.close()


class Collector:
    """A sink: every output, and an event when the last one came."""

    def __init__(self) -> None:
        self.outputs: list[StepOutput] = []
        self.times: list[float] = []
        self.done = threading.Event()
        self.finished_at = 0.0

    def __call__(self, output: StepOutput) -> None:
        self.outputs.append(output)
        self.times.append(time.monotonic())
        if output.finish_reason is not None:
            self.finished_at = time.monotonic()
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs)

    @property
    def last(self) -> StepOutput:
        return self.outputs[-1]

    def tokens(self) -> list[int]:
        return [t for o in self.outputs for t in o.token_ids]


def _run(model: ChatModel, messages, **params) -> Collector:
    sink = Collector()
    model.engine.submit(model.chat_prompt(messages), SamplingParams(**params), sink)
    assert sink.done.wait(60), "no finish within 60 s"
    return sink


def _poll(condition, timeout_s: float = 5.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - start


def test_greedy_answer_names_paris(model):
    sink = _run(model, CAPITAL, max_tokens=24, temperature=0.0)
    assert "Paris" in sink.text
    assert sink.last.completion_tokens == len(sink.tokens())
    assert sink.last.prompt_tokens == len(model.chat_prompt(CAPITAL))


def test_batched_sequences_decode_as_they_do_alone(model):
    prompts = [[("user", q)] for q in ("What is 2+2?", "Name a colour.", "Say hello in French.")]
    alone = [_run(model, p, max_tokens=16, temperature=0.0).tokens() for p in prompts]
    sinks = [Collector() for _ in prompts]
    for prompt, sink in zip(prompts, sinks):
        model.engine.submit(model.chat_prompt(prompt), SamplingParams(16, temperature=0.0), sink)
    for sink in sinks:
        assert sink.done.wait(60)
    assert [s.tokens() for s in sinks] == alone


def test_a_later_short_request_joins_the_batch_and_finishes_first(model):
    long, short = Collector(), Collector()
    model.engine.submit(model.chat_prompt([("user", "Write a long story about a dragon.")]),
                        SamplingParams(200, temperature=0.0), long)
    _poll(lambda: len(long.outputs) >= 5)
    model.engine.submit(model.chat_prompt(CAPITAL), SamplingParams(6, temperature=0.0), short)
    assert short.done.wait(30) and long.done.wait(60)
    assert short.finished_at < long.finished_at
    assert long.last.completion_tokens == 200  # the long one kept decoding meanwhile
    # Both took part in the same decode steps: the short one's steps lie inside the long one's.
    assert long.last.first_step < short.last.first_step <= short.last.last_step \
        < long.last.last_step


def test_a_cancelled_sequence_leaves_the_batch_within_a_step(model):
    sink = Collector()
    ticket = model.engine.submit(model.chat_prompt([("user", "Count to one thousand.")]),
                                 SamplingParams(400, temperature=0.0), sink)
    _poll(lambda: len(sink.outputs) >= 3)
    assert model.engine.stats().running == 1
    cancelled_before = model.engine.stats().finished.get("cancelled", 0)
    ticket.cancel()
    waited = _poll(lambda: model.engine.stats().running == 0, timeout_s=1.0)
    assert waited < 1.0
    assert model.engine.stats().finished["cancelled"] == cancelled_before + 1
    assert len(sink.outputs) < 400


def test_the_async_stream_cancels_when_its_consumer_stops(model):
    async def read_three() -> None:
        stream = generate(model.engine, model.chat_prompt([("user", "Count to one hundred.")]),
                          SamplingParams(300, temperature=0.0))
        got = 0
        async for outputs in stream:
            got += len(outputs)
            if got >= 3:
                break
        await stream.aclose()

    asyncio.run(read_three())
    _poll(lambda: model.engine.stats().running == 0, timeout_s=1.0)


def test_a_seed_gives_the_same_sample_and_another_seed_another(model):
    story = [("user", "Tell me a short story.")]
    runs = [_run(model, story, max_tokens=24, temperature=1.0, top_p=0.95, top_k=50, seed=s)
            for s in (7, 7, 8)]
    assert runs[0].tokens() == runs[1].tokens()
    assert runs[0].tokens() != runs[2].tokens()


def test_a_stop_sequence_ends_the_text_before_it(model):
    sink = _run(model, CAPITAL, max_tokens=24, temperature=0.0, stop=("Paris",))
    assert sink.last.finish_reason == "stop"
    assert "Paris" not in sink.text and sink.text.startswith("The capital of France is")


def test_max_tokens_ends_with_length(model):
    sink = _run(model, [("user", "Write a long essay about rivers.")], max_tokens=5,
                temperature=0.0)
    assert sink.last.finish_reason == "length" and sink.last.completion_tokens == 5


def test_logprobs_are_the_greedy_choice_and_its_alternatives(model):
    sink = _run(model, CAPITAL, max_tokens=4, temperature=0.0, logprobs=True, top_logprobs=3)
    for output in sink.outputs:
        for lp in output.logprobs:
            assert lp.logprob <= 0.0 and len(lp.top) == 3
            assert lp.top[0][0] == lp.token_id  # greedy: the likeliest
            assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)


def test_a_prompt_over_the_context_is_refused_naming_both_numbers(model):
    prompt = model.chat_prompt(CAPITAL)
    with pytest.raises(MaasError) as refused:
        model.engine.submit(prompt, SamplingParams(max_tokens=600), Collector())
    assert refused.value.status == 400 and refused.value.param == "max_tokens"
    assert str(len(prompt)) in refused.value.message and "512" in refused.value.message


def test_text_stream_holds_back_a_stop_sequence_split_across_tokens(model):
    tokenizer = model.tokenizer
    ids = tokenizer.encode("The answer is forty-two. END of story", add_special_tokens=False).ids
    stream = TextStream(tokenizer, stop=("END",))
    text = "".join(stream.push(i) for i in ids if not stream.stopped)
    assert stream.stopped and text == "The answer is forty-two. "
    emoji = tokenizer.encode("ok 🙂 done", add_special_tokens=False).ids
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in emoji] + [stream.finish()]
    assert "".join(pieces) == "ok 🙂 done" and all("\ufffd" not in p for p in pieces)


def test_a_replaced_version_drains_then_stops(llm_int4_dir):
    model = ChatModel.open(llm_int4_dir, LLMServeConfig(max_num_seqs=2, context_length=256), 1)
    sink = Collector()
    model.engine.submit(model.chat_prompt(CAPITAL), SamplingParams(12, temperature=0.0), sink)
    model.engine.close(drain=True)  # returns at once; what runs finishes
    with pytest.raises(MaasError) as refused:
        model.engine.submit(model.chat_prompt(CAPITAL), SamplingParams(4), Collector())
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert sink.done.wait(30) and sink.last.finish_reason in ("stop", "length")
    _poll(lambda: not model.engine._thread.is_alive(), timeout_s=5.0)


def test_a_long_prompt_goes_in_by_chunks_between_decode_steps(llm_int4_dir):
    facts = " ".join(f"Box {i} holds {i * 7} red marbles." for i in range(40))
    messages = [("user", facts + " How many marbles does box 3 hold?")]
    whole = ChatModel.open(llm_int4_dir, LLMServeConfig(
        max_num_seqs=2, context_length=1024, max_prefill_tokens=1024), 2)
    chunked = ChatModel.open(llm_int4_dir, LLMServeConfig(
        max_num_seqs=2, context_length=1024, max_prefill_tokens=64), 2)
    try:
        prompt = chunked.chat_prompt(messages)
        assert len(prompt) > 5 * 64
        reference = _run(whole, messages, max_tokens=12, temperature=0.0).tokens()
        runner, long = Collector(), Collector()
        chunked.engine.submit(chunked.chat_prompt(CAPITAL), SamplingParams(300, temperature=0.0),
                              runner)
        _poll(lambda: len(runner.outputs) >= 3)
        submitted = time.monotonic()
        chunked.engine.submit(prompt, SamplingParams(12, temperature=0.0), long)
        assert long.done.wait(60)
        # The running stream kept decoding while the prompt went in, a chunk a turn...
        meanwhile = [t for t in runner.times if submitted < t < long.times[0]]
        assert len(meanwhile) >= len(prompt) // 64 - 1
        # ...and the chunks give exactly what one whole prefill gives.
        assert long.tokens() == reference
    finally:
        whole.close()
        chunked.close()
