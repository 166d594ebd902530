"""Usage in the access store: what replicas meter, summed for ``maas usage`` and the quotas.

    maas usage --tenant acme --since 24h

One row per minute, tenant, key, model, version and status, holding requests, rows, summed
latency and, for LLM requests, the engine's prompt and completion token counts. Replicas add
to it every ``access.usage_flush_s`` (serve_apps.metering); the limiter reads what a quota
period already used from it when it first sees a key (maas.limits).
"""

from __future__ import annotations

import math
from typing import Sequence

import sqlalchemy as sa

from maas.access.database import insert_for
from maas.access.records import UsageRow
from maas.access.tables import UsageKey, usage

# Requests refused before they reach a model use no quota (nor does the quota count them).
UNCOUNTED_STATUSES = (401, 403, 429)
COUNTERS = ("requests", "rows", "latency_ms", "prompt_tokens", "completion_tokens")


def _minute(since: float) -> int:
    return math.floor(since / 60) * 60


class UsageQueries:
    """The usage half of :class:`maas.access.AccessStore` (it holds ``self.engine``)."""

    engine: sa.Engine

    def add_usage(self, counts: dict[UsageKey, Sequence[float]]) -> None:
        """Add ``counts`` ((minute, tenant, key, model, version, status) -> [requests, rows,
        latency ms] or [requests, rows, latency ms, prompt tokens, completion tokens]) to the
        usage table, all in one transaction."""
        if not counts:
            return
        rows = []
        # Sorted: every writer locks the rows it adds to in the same order, so two replicas
        # flushing the same minutes wait for each other instead of deadlocking (unsorted,
        # PostgreSQL aborted a writer in 5 runs of 5 of tests/unit/test_access_concurrency.py).
        for (minute, tenant, key_id, model, version, status), count in sorted(counts.items()):
            n, served, ms, prompt, completion = (*count, 0, 0)[:5]
            rows.append({"minute": minute, "tenant": tenant, "key_id": key_id, "model": model,
                         "version": version, "status": status, "requests": int(n),
                         "rows": int(served), "latency_ms": float(ms),
                         "prompt_tokens": int(prompt), "completion_tokens": int(completion)})
        with self.engine.begin() as conn:
            # One upsert per row, adding to what is there: with an update, then an insert where
            # the update found nothing, two writers of a new row both inserted and PostgreSQL
            # refused the second (UniqueViolation, in that test; its counts waited for the next
            # flush). SQLite's single writer never raced.
            insert = insert_for(conn, usage)
            conn.execute(insert.on_conflict_do_update(
                index_elements=list(usage.primary_key),
                set_={name: usage.c[name] + insert.excluded[name] for name in COUNTERS}), rows)

    def usage(self, tenant: str | None = None, model: str | None = None,
              since: float | None = None, bucket_s: int | None = None) -> list[UsageRow]:
        """Usage summed per tenant, model, version and status; with ``bucket_s`` (a whole
        number of minutes) also per period of that length, each row's ``start`` its first
        second (epoch), oldest first: a time series for charts."""
        columns = [usage.c.tenant, usage.c.model, usage.c.version, usage.c.status]
        if bucket_s is not None:
            if bucket_s < 60 or bucket_s % 60:
                raise ValueError(f"bucket_s: {bucket_s} is not a whole number of minutes")
            columns.insert(0, (usage.c.minute - usage.c.minute % bucket_s).label("start"))
        query = sa.select(*columns, sa.func.sum(usage.c.requests).label("requests"),
                          sa.func.sum(usage.c.rows).label("rows"),
                          sa.func.sum(usage.c.latency_ms).label("latency_ms"),
                          sa.func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
                          sa.func.sum(usage.c.completion_tokens).label("completion_tokens")
                          ).group_by(*columns).order_by(*columns)
        if tenant is not None:
            query = query.where(usage.c.tenant == tenant)
        if model is not None:
            query = query.where(usage.c.model == model)
        if since is not None:
            query = query.where(usage.c.minute >= _minute(since))
        with self.engine.connect() as conn:
            return [UsageRow(r.tenant, r.model, r.version, r.status, int(r.requests), int(r.rows),
                             round(r.latency_ms / r.requests, 3) if r.requests else 0.0,
                             int(r.prompt_tokens or 0), int(r.completion_tokens or 0),
                             int(r.start) if bucket_s is not None else None)
                    for r in conn.execute(query)]

    def quota_used(self, key_id: str, since: float) -> int:
        """Requests under ``key_id`` since ``since`` that counted toward its quota."""
        query = sa.select(sa.func.coalesce(sa.func.sum(usage.c.requests), 0)).where(
            usage.c.key_id == key_id, usage.c.minute >= _minute(since),
            usage.c.status.not_in(UNCOUNTED_STATUSES))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def token_quota_used(self, key_id: str, since: float) -> int:
        """Prompt + completion tokens under ``key_id`` since ``since``: every token an engine
        counted, whatever the request's status (a refused request has none)."""
        total = usage.c.prompt_tokens + usage.c.completion_tokens
        query = sa.select(sa.func.coalesce(sa.func.sum(total), 0)).where(
            usage.c.key_id == key_id, usage.c.minute >= _minute(since))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
