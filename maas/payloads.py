"""The payload log: request payloads of tenants whose agreement allows it, redacted as it says.

    <access.payload_dir>/<model>/<YYYY-MM-DD>.<host>-<pid>.jsonl   one JSON object per request

One file per writing process and day: replicas on several machines share one payload_dir (a
volume every node mounts), and appends from several machines to one file are not atomic on
network filesystems (NFS emulates O_APPEND on the client), so no two processes share a file.

An infer request's record holds its ``inputs`` (OIP tensors); an LLM request's its ``prompt``
(text or chat messages) and ``completion`` (:meth:`PayloadLog.add_text`). Both are redacted
the same way: ``digest`` keeps a sha256, ``mask_pii`` masks every string in them.

Written only when the model's ``agreement.data_usage.log_payloads`` is true *and* the tenant did
not refuse it when accepting (``maas agreements accept --no-payload-logging``). Files older
than ``retention_days`` are deleted. Nothing else in maas writes request payloads anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from maas.config import DataUsageConfig

# What mask_pii replaces in text inputs (BYTES tensors): e-mail addresses, card-like and
# phone-like digit runs. A regex is a floor, not a guarantee: use digest for sensitive text.
PII_PATTERNS = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "<card>"),
    (re.compile(r"\+?\d[\d ().-]{7,}\d"), "<phone>"),
]


def mask_text(text: str) -> str:
    for pattern, placeholder in PII_PATTERNS:
        text = pattern.sub(placeholder, text)
    return text


def _mask(values: Any) -> Any:
    if isinstance(values, str):
        return mask_text(values)
    if isinstance(values, list):
        return [_mask(v) for v in values]
    if isinstance(values, dict):  # chat messages: {"role": ..., "content": ...}
        return {k: _mask(v) for k, v in values.items()}
    return values


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def redact(inputs: list[dict[str, Any]], redaction: str) -> list[dict[str, Any]]:
    """``inputs`` (OIP request inputs as dicts) as the payload log may keep them."""
    if redaction == "none":
        return inputs
    if redaction == "digest":
        return [{"name": t["name"], "shape": t["shape"], "datatype": t["datatype"],
                 "sha256": _sha256(t["data"])}
                for t in inputs]
    if redaction == "mask_pii":
        return [dict(t, data=_mask(t["data"])) for t in inputs]
    raise ValueError(f"redaction {redaction!r}: use none, digest or mask_pii")


def redact_text(value: Any, redaction: str) -> Any:
    """An LLM prompt or completion (text, or chat messages) as the payload log may keep it:
    as sent, ``{"sha256": ...}``, or with every string masked."""
    if redaction == "none":
        return value
    if redaction == "digest":
        return {"sha256": _sha256(value)}
    if redaction == "mask_pii":
        return _mask(value)
    raise ValueError(f"redaction {redaction!r}: use none, digest or mask_pii")


class PayloadLog:
    """Buffered in memory, appended to the day's file by :meth:`flush` (the replica's
    background thread, once a second), never on the request path."""

    def __init__(self, folder: Path, model: str, terms: DataUsageConfig):
        self.folder = folder / model
        self.terms = terms
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._pruned = 0.0
        self.writer = f"{socket.gethostname()}-{os.getpid()}"  # this process's files

    def add(self, tenant: str, key_id: str, version: str, request_id: str | None,
            inputs: list[dict[str, Any]]) -> None:
        record = {"time": time.time(), "tenant": tenant, "key_id": key_id, "version": version,
                  "inputs": redact(inputs, self.terms.redaction)}
        self._append(record, request_id)

    def add_text(self, tenant: str, key_id: str, version: str, request_id: str | None,
                 prompt: Any, completion: Any) -> None:
        """An LLM request: its ``prompt`` (text or chat messages) and ``completion`` text."""
        redaction = self.terms.redaction
        self._append({"time": time.time(), "tenant": tenant, "key_id": key_id,
                      "version": version, "prompt": redact_text(prompt, redaction),
                      "completion": redact_text(completion, redaction)}, request_id)

    def _append(self, record: dict[str, Any], request_id: str | None) -> None:
        if self.terms.redaction == "none":  # a client's id can carry what was redacted
            record["id"] = request_id
        with self._lock:
            self._pending.append(record)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self.folder.mkdir(parents=True, exist_ok=True)
            by_day: dict[str, list[str]] = {}
            for record in pending:
                day = datetime.fromtimestamp(record["time"], timezone.utc).strftime("%Y-%m-%d")
                by_day.setdefault(day, []).append(json.dumps(record, separators=(",", ":")))
            for day, lines in by_day.items():
                # One write per flush, to this process's own file of the day.
                with open(self.folder / f"{day}.{self.writer}.jsonl", "a",
                          encoding="utf-8") as out:
                    out.write("\n".join(lines) + "\n")
        if time.time() - self._pruned > 3600:
            self.prune()

    def prune(self, now: float | None = None) -> list[Path]:
        """Delete day files older than ``retention_days``; return them."""
        now = time.time() if now is None else now
        self._pruned = now
        cutoff = datetime.fromtimestamp(now - self.terms.retention_days * 86400, timezone.utc)
        removed = []
        for path in sorted(self.folder.glob("*.jsonl")) if self.folder.exists() else []:
            try:  # any writer's file of the day, and the <day>.jsonl of older versions
                day = datetime.strptime(path.name[:10], "%Y-%m-%d").replace(tzinfo=timezone.utc)
            except ValueError:
                continue  # not one of ours
            if day.date() < cutoff.date():
                os.remove(path)
                removed.append(path)
        return removed
