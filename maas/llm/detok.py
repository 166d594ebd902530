"""Token ids to text as they are generated: whole characters only, stop sequences honoured.

Byte-level BPE splits a character across tokens (an emoji is often 2-4 tokens), so a decoded
tail ending in U+FFFD is held back until its next token completes it. A stop sequence may arrive
split across tokens too: text that could still turn into one is held back, and once one appears
the text ends before it (OpenAI's semantics: the stop sequence is not returned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPLACEMENT = "\ufffd"


@dataclass
class TextStream:
    """The text of one sequence's generated tokens, released a piece at a time."""

    tokenizer: Any  # tokenizers.Tokenizer
    stop: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    released: int = 0  # characters of the decoded text already handed out
    stopped: bool = False

    def push(self, token_id: int) -> str:
        """Add one token; the text that may be released now (maybe empty)."""
        self.token_ids.append(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """The sequence ended: whatever was held back (a partial stop sequence is text too)."""
        return "" if self.stopped else self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if not final and text.endswith(REPLACEMENT):
            return ""
        end = len(text)
        for stop in self.stop:
            at = text.find(stop, max(0, self.released - len(stop) + 1))
            if at != -1 and at < end:
                end = at
                self.stopped = True
        if not self.stopped and not final:
            end -= self._partial_stop(text)
        piece = text[self.released:end] if end > self.released else ""
        self.released = max(self.released, end)
        return piece

    def _partial_stop(self, text: str) -> int:
        """How many trailing characters could be the start of a stop sequence."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
