"""A chat LLM version as a replica holds it: the engine, the tokenizer, the chat template.

The chat template is the model's own (``chat_template.jinja``, written by the converter from
the model's tokenizer config), rendered in Jinja's sandbox: it comes with the model files, and a
template is code. ``developer`` messages are given to the template as ``system`` (OpenAI's newer
name for the same role).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas.config.serve import LLMServeConfig
from maas.llm.engine import Engine

log = logging.getLogger(__name__)
TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_FILE = "tokenizer.json"


def _template(model_dir: Path) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    path = model_dir / TEMPLATE_FILE
    if not path.is_file():
        return None
    environment = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
    return environment.from_string(path.read_text())


@dataclass
class ChatModel:
    """One loaded version: ``prompt_ids`` for chat or plain prompts, ``engine`` to generate."""

    engine: Engine
    tokenizer: Any  # tokenizers.Tokenizer
    template: Any  # a compiled Jinja template, or None for a model without one
    model_dir: Path

    @classmethod
    def open(cls, model_dir: Path, settings: LLMServeConfig, threads: int,
             spin: bool = False) -> ChatModel:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        engine = Engine(model_dir, settings, threads, tokenizer, spin)
        return cls(engine=engine, tokenizer=tokenizer, template=_template(model_dir),
                   model_dir=model_dir)

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def chat_prompt(self, messages: list[tuple[str, str]]) -> list[int]:
        """Token ids of ``messages`` [(role, text)] through the chat template, ending where
        the assistant's answer starts."""
        if self.template is None:
            text = "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"
        else:
            text = self.template.render(
                messages=[{"role": "system" if role == "developer" else role, "content": content}
                          for role, content in messages],
                add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def close(self) -> None:
        self.engine.close()
