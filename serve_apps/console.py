"""The web console's parts the server app serves: its static files, and what a signed-in
tenant may see and do through ``/v2/tenant`` (its keys, its usage over time, accepting a
model's agreement).

The page at ``/`` is a small front end (serve_apps/console/: HTML, one script, one style
sheet, and uPlot for the charts, all in the package: nothing comes from a CDN). It keeps the
key in the tab's ``sessionStorage`` and sends it as the Bearer header; it never puts it in a
URL. Every playground call goes through the public API with that key, so it is metered and
limited like any client's. Every answer of the console carries the headers below: a CSP
without inline scripts or styles, no framing, no MIME sniffing, no referrer.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from fastapi.responses import Response

import maas
from maas.access import AccessStore, KeyRecord
from maas.access.records import iso, key_id_of
from maas.catalog import CatalogEntry, usage_cost
from maas.oip import InferError
from maas.routes import priced_as

ASSETS = Path(__file__).with_name("console")
ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".png": "image/png"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
BUCKETS = {"hour": 3600, "day": 86400}
MAX_HOURS = 24 * 90


def page() -> Response:
    """The console's one page (every view is drawn by console.js)."""
    return asset("index.html")


def asset(name: str) -> Response:
    """A file of the console, by name; 404 for anything else (no paths: a flat folder)."""
    path = ASSETS / name
    if not ASSET_NAME.match(name) or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise InferError(404, f"no console file {name!r}")
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix],
                    headers=SECURITY_HEADERS)


def links(tracking_uri: str, dashboard_url: str | None) -> dict[str, str | None]:
    """The status strip's links. Whoever opens the page sees them: an MLflow server's URL
    without any credentials in it, and for a local store not even its path."""
    parts = urlsplit(tracking_uri)
    web = parts.scheme in ("http", "https") and parts.hostname is not None
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return {"docs": "/docs", "dashboard": dashboard_url, "version": maas.__version__,
            "mlflow": parts._replace(netloc=host).geturl() if web else None,
            "mlflow_command": None if web else "mlflow ui --backend-store-uri <deploy.yaml's "
                                               "tracking URI>, on the head"}


def whoami(record: KeyRecord) -> dict[str, object]:
    """The signed-in key, as ``maas keys list --json`` shows it."""
    return {"tenant": record.tenant, "key": record.public()}


def keys(store: AccessStore, record: KeyRecord) -> list[dict[str, object]]:
    """The tenant's keys, newest first (never a hash or salt)."""
    return [k.public() for k in reversed(store.keys(record.tenant))]


def revoke(store: AccessStore, record: KeyRecord, key_id: str) -> KeyRecord:
    """Revoke one of the tenant's own keys, and return it as stored now; another tenant's
    key is as unknown as a missing one (404: no way to probe which key ids exist)."""
    key_id = key_id_of(key_id)
    target = store.key(key_id)
    if target is None or target.tenant != record.tenant:
        raise InferError(404, f"key_id: tenant {record.tenant!r} has no key {key_id!r}")
    return store.revoke(key_id)


def usage(store: AccessStore, record: KeyRecord, prices: list[CatalogEntry], hours: int,
          bucket: str) -> dict[str, object]:
    """The tenant's usage over the last ``hours``, per ``bucket`` (hour or day), model and
    status, each period with its cost at the catalog's prices (an explanation is priced as
    the rows of its model); the same numbers as ``maas usage --tenant``."""
    if bucket not in BUCKETS:
        raise InferError(400, f"bucket: {bucket!r} is not one of {sorted(BUCKETS)}")
    if not 1 <= hours <= MAX_HOURS:
        raise InferError(400, f"hours: {hours} is not between 1 and {MAX_HOURS}")
    by_model = {entry.name: entry for entry in prices}
    rows = store.usage(tenant=record.tenant, since=time.time() - hours * 3600,
                       bucket_s=BUCKETS[bucket])
    series = []
    for row in rows:
        entry = by_model.get(priced_as(row.model))
        cost = None if entry is None else usage_cost(row, entry)
        series.append({"start": iso(row.start), "model": row.model, "version": row.version,
                       "status": row.status, "requests": row.requests, "rows": row.rows,
                       "prompt_tokens": row.prompt_tokens,
                       "completion_tokens": row.completion_tokens,
                       "mean_latency_ms": row.mean_latency_ms, "cost": cost,
                       "currency": entry.currency if entry is not None else None})
    return {"tenant": record.tenant, "bucket": bucket, "hours": hours, "series": series}


def accept(store: AccessStore, record: KeyRecord, model: str, version: int,
           visible: bool) -> dict[str, object]:
    """Record the tenant's acceptance of ``version`` of ``model``'s agreement, by this key
    (the store's rules: only the current version; `maas agreements accept` does the same)."""
    if not visible:
        raise InferError(404, f"model: {model!r} is not in this key's catalog")
    current = store.agreement(model)
    if current is None:
        raise InferError(404, f"model: {model!r} has no agreement to accept")
    if version != current.version:
        raise InferError(409, f"version: agreement version {version} of {model!r} is not the "
                              f"current one; reload the catalog and accept version "
                              f"{current.version}")
    done = store.accept(record.tenant, model, version,
                        accepted_by=f"console, key {record.public()['prefix']}")
    return done.public()


def acceptances(store: AccessStore, record: KeyRecord) -> list[dict[str, object]]:
    """The agreements the tenant has accepted (every version it accepted)."""
    return [a.public() for a in store.acceptances(tenant=record.tenant)]
