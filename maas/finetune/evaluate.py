"""Base and tuned, side by side: the task score on the tenant's held-out rows and the general
probe set that guards against forgetting.

Both are scored on what would be served: the built ONNX variant, answering greedily through
maas's own engine (maas.llm.engine), every prompt in one continuous batch.

- **Task**: where the held-out answer is a JSON object, an answer counts when it parses and
  equals it (``fields``: the share of its top-level keys answered right, for partial credit in
  the report); otherwise when its text equals the answer, surrounding whitespace aside.
- **Probe**: ``probe.jsonl``, general questions with known short answers, shipped with maas;
  an answer passes when it contains one of the accepted answers (case aside).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas.config.serve import LLMServeConfig
from maas.finetune.examples import ChatExample

PROBE = Path(__file__).with_name("probe.jsonl")
# A probe answer's accepted words come in its first sentence ("The capital of France is
# Paris."): 32 tokens hold it, and keep the probe to a few seconds a model.
PROBE_MAX_TOKENS = 32
ANSWER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Score:
    exact: float  # share of rows answered exactly
    fields: float  # JSON answers: share of the expected keys right; text answers: = exact
    valid_json: float  # share of answers that parse as JSON (1.0 where none is expected)
    rows: int


def _json(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def score(answers: Sequence[str], expected: Sequence[str]) -> Score:
    """``answers`` against ``expected``, row by row."""
    exact = fields = valid = 0.0
    for answer, truth in zip(answers, expected, strict=True):
        wanted = _json(truth)
        if isinstance(wanted, dict):
            got = _json(answer)
            valid += got is not None
            right = [isinstance(got, dict) and got.get(key) == value
                     for key, value in wanted.items()]
            exact += got == wanted
            fields += sum(right) / max(len(right), 1)
        else:
            hit = answer.strip() == truth.strip()
            exact += hit
            fields += hit
            valid += 1
    rows = max(len(expected), 1)
    return Score(exact / rows, fields / rows, valid / rows, len(expected))


@dataclass(frozen=True)
class ProbeQuestion:
    question: str
    answers: tuple[str, ...]


def probe_questions(path: Path = PROBE) -> list[ProbeQuestion]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [ProbeQuestion(r["question"], tuple(r["answers"])) for r in rows]


def probe_score(answers: Sequence[str], questions: Sequence[ProbeQuestion]) -> float:
    passed = sum(any(a.lower() in answer.lower() for a in q.answers)
                 for answer, q in zip(answers, questions, strict=True))
    return passed / max(len(questions), 1)


def prompts_of(examples: Sequence[ChatExample]) -> tuple[list[list[tuple[str, str]]], list[str]]:
    """Each example's conversation up to its last assistant message, and that message."""
    prompts, expected = [], []
    for example in examples:
        messages = example.messages
        last = max(i for i, m in enumerate(messages) if m.role == "assistant")
        prompts.append([(m.role, m.content) for m in messages[:last]])
        expected.append(messages[last].content)
    return prompts, expected


def answer_all(model_dir: Path, conversations: Sequence[list[tuple[str, str]]],
               max_tokens: Sequence[int], threads: int, streams: int = 16,
               context_length: int = 2048) -> list[str]:
    """Greedy answers of the model in ``model_dir`` to every conversation (at most
    ``max_tokens[i]`` tokens for the i-th), ``streams`` at a time through one engine."""
    from maas.llm.chat import ChatModel
    from maas.llm.sampling import SamplingParams

    settings = LLMServeConfig(max_num_seqs=streams, context_length=context_length)
    model = ChatModel.open(model_dir, settings, threads)
    texts = [""] * len(conversations)
    done = threading.Semaphore(0)
    try:
        for index, conversation in enumerate(conversations):
            def sink(output: Any, index: int = index) -> None:
                texts[index] += output.text
                if output.finish_reason is not None:
                    done.release()

            model.engine.submit(model.chat_prompt(conversation),
                                SamplingParams(max_tokens=max_tokens[index], temperature=0.0),
                                sink)
        for _ in conversations:
            if not done.acquire(timeout=ANSWER_TIMEOUT_S):
                raise TimeoutError(f"the engine answered nothing for {ANSWER_TIMEOUT_S:.0f} s")
    finally:
        model.close()
    return texts


@dataclass(frozen=True)
class Evaluation:
    """One model's scores: the task on the held-out rows, the probe set, a few answers."""

    task: Score
    probe: float
    answers: list[str]  # the held-out answers, in order

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``task_exact``, ``task_fields``, ``task_valid_json`` and ``probe``, each name after
        ``prefix`` (``base_``, ``tuned_``)."""
        return {f"{prefix}task_exact": self.task.exact, f"{prefix}task_fields": self.task.fields,
                f"{prefix}task_valid_json": self.task.valid_json, f"{prefix}probe": self.probe}


def evaluate(model_dir: Path, heldout: Sequence[ChatExample], max_tokens: int,
             threads: int, context_length: int = 2048) -> Evaluation:
    """``model_dir``'s held-out task score and probe score, in one engine batch whose
    sequences hold ``context_length`` tokens (a row's prompt and its answer)."""
    conversations, expected = prompts_of(heldout)
    questions = probe_questions()
    probe = [[("user", q.question)] for q in questions]
    limits = [max_tokens] * len(conversations) + [PROBE_MAX_TOKENS] * len(probe)
    answers = answer_all(model_dir, [*conversations, *probe], limits, threads,
                         context_length=max(context_length, 256))
    held, asked = answers[:len(conversations)], answers[len(conversations):]
    return Evaluation(score(held, expected), probe_score(asked, questions), held)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def gate(base: Evaluation, tuned: Evaluation, min_task_gain: float,
         max_probe_drop: float) -> GateDecision:
    """Tuned must beat base on the task by ``min_task_gain`` and keep the probe within
    ``max_probe_drop`` of base's."""
    gain = tuned.task.exact - base.task.exact
    drop = base.probe - tuned.probe
    shown = (f"task {base.task.exact:.2f} -> {tuned.task.exact:.2f} (gain {gain:+.2f}, needs "
             f">= {min_task_gain:+.2f}), probe {base.probe:.2f} -> {tuned.probe:.2f} (drop "
             f"{drop:+.2f}, allowed <= {max_probe_drop:.2f})")
    return GateDecision(gain >= min_task_gain and drop <= max_probe_drop + 1e-9, shown)
