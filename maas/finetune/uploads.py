"""Tenants' uploaded fine-tuning files: the bytes under ``state_dir/files/<tenant>/``, a row
each in the access store.

    files = FileStore(access_url, state_path / "files")
    record = files.save(tenant, "train.jsonl", "fine-tune", content, limits)  # 400 names a line
    files.get(tenant, record.file_id)       # 404 for another tenant's file, or a deleted one
    files.delete(tenant, record.file_id)    # the bytes are removed, not only hidden
    files.purge()                           # files past their retention, bytes and all

A file is checked line by line before it is stored (maas.finetune.examples), so a job never
starts on data that cannot train. Its content is never logged: errors name a line and a field.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from maas.access.database import engine
from maas.access.tables import files
from maas.errors import MaasError
from maas.finetune.examples import ChatData, parse_jsonl, write_bytes

PURPOSE = "fine-tune"
DAY_S = 86400.0


class FileNotFound(MaasError):
    status = 404


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be (deploy.yaml's ``fine_tuning``)."""

    max_bytes: int
    max_lines: int
    retention_days: int


@dataclass(frozen=True)
class FileRecord:
    file_id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    rows: int
    sha256: str
    created_at: float
    expires_at: float


def _record(row: sa.Row) -> FileRecord:
    return FileRecord(row.file_id, row.tenant, row.filename, row.purpose, row.bytes, row.rows,
                      row.sha256, row.created_at, row.expires_at)


def _live(tenant: str) -> tuple:
    """Conditions of ``tenant``'s files that are neither deleted nor past their retention."""
    return (files.c.tenant == tenant, files.c.deleted_at.is_(None),
            files.c.expires_at > time.time())


def check_upload(content: bytes, purpose: str, limits: UploadLimits) -> ChatData:
    """``content`` as chat examples, or a 400/413 naming the field (and the line) at fault."""
    if purpose != PURPOSE:
        raise MaasError(f"purpose: {purpose!r} is not accepted here; upload fine-tuning data "
                        f"with purpose={PURPOSE!r}", status=400, param="purpose")
    if len(content) > limits.max_bytes:
        raise MaasError(f"file: {len(content)} bytes is more than the {limits.max_bytes} "
                        f"allowed (fine_tuning.max_file_bytes)", status=413, param="file")
    lines = content.count(b"\n") + (0 if content.endswith(b"\n") else 1)
    if lines > limits.max_lines:
        raise MaasError(f"file: {lines} lines is more than the {limits.max_lines} allowed "
                        f"(fine_tuning.max_file_lines); split it", status=400, param="file")
    return parse_jsonl(content, max_rows=limits.max_lines, param="file")


class FileStore:
    """Files of every tenant: rows in the access store at ``url``, bytes in ``folder``."""

    def __init__(self, url: str, folder: Path):
        self.engine = engine(url)
        self.folder = folder

    def path(self, record: FileRecord) -> Path:
        return self.folder / record.tenant / f"{record.file_id}.jsonl"

    def save(self, tenant: str, filename: str, purpose: str, content: bytes,
             limits: UploadLimits) -> FileRecord:
        """Check ``content`` (:func:`check_upload`), write it atomically, record it."""
        data = check_upload(content, purpose, limits)
        now = time.time()
        record = FileRecord(f"file-{secrets.token_hex(12)}", tenant, Path(filename).name[:255]
                            or "upload.jsonl", purpose, len(content), data.rows, data.sha256,
                            now, now + limits.retention_days * DAY_S)
        path = self.path(record)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_bytes(path, content)
        try:
            with self.engine.begin() as conn:
                conn.execute(files.insert().values(**record.__dict__, deleted_at=None))
        except BaseException:
            path.unlink(missing_ok=True)  # no row, no bytes
            raise
        return record

    def get(self, tenant: str, file_id: str, param: str = "file_id") -> FileRecord:
        """``tenant``'s live file ``file_id``; 404 for any other (another tenant's alike),
        naming the request field ``param``."""
        with self.engine.connect() as conn:
            row = conn.execute(files.select().where(
                files.c.file_id == file_id, *_live(tenant))).first()
        if row is None:
            raise FileNotFound(f"{param}: no file {file_id!r} here (`GET /v1/files` lists "
                               f"yours)", param=param)
        return _record(row)

    def content(self, tenant: str, file_id: str) -> bytes:
        return self.path(self.get(tenant, file_id)).read_bytes()

    def list(self, tenant: str) -> list[FileRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(files.select().where(*_live(tenant))
                                .order_by(files.c.created_at.desc()))
            return [_record(row) for row in rows]

    def delete(self, tenant: str, file_id: str) -> FileRecord:
        """Remove the bytes, then mark the row deleted (a crash between the two leaves a row
        that :meth:`purge` finishes)."""
        record = self.get(tenant, file_id)
        self._remove(record)
        return record

    def _remove(self, record: FileRecord) -> None:
        self.path(record).unlink(missing_ok=True)
        with self.engine.begin() as conn:
            conn.execute(files.update().where(files.c.file_id == record.file_id)
                         .values(deleted_at=time.time()))

    def keep_at_most(self, record: FileRecord, days: int) -> None:
        """Delete ``record`` no later than ``days`` after its upload (a model's terms)."""
        with self.engine.begin() as conn:
            conn.execute(files.update().where(files.c.file_id == record.file_id).values(
                expires_at=min(record.expires_at, record.created_at + days * DAY_S)))

    def purge(self, now: float | None = None) -> int:
        """Delete every file past its retention (bytes and all): how many."""
        with self.engine.connect() as conn:
            rows = conn.execute(files.select().where(
                files.c.deleted_at.is_(None),
                files.c.expires_at <= (time.time() if now is None else now))).all()
        for row in rows:
            self._remove(_record(row))
        return len(rows)
