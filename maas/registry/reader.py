"""What a replica (and ``maas models list|show``) reads from the registry, without MLflow.

A serving replica only reads: the aliases, the version numbers, one version's tags and its
verified files. Through MLflow's client that costs ~75 MiB of resident memory per replica
(MLflow's imports and its store's models) for a handful of indexed lookups, so a replica
whose registry is a database reads MLflow's registry tables with SQLAlchemy core instead (the
access store already loads SQLAlchemy) and its files by path. Same answers, same errors:
tests/unit/test_registry_reader.py compares every read with MLflow's own on one registry,
which is what catches a table MLflow changes when its pinned version moves.

A registry behind an MLflow server (``http(s)://``, ``databricks``), or one with MLflow's
workspaces turned on, is read through MLflow's client (:func:`registry_view`).
"""

from __future__ import annotations

import os
from functools import cache, cached_property
from types import SimpleNamespace
from typing import Any, Protocol

from maas.registry.artifacts import Artifacts
from maas.registry.versions import (MAX_VERSION, ModelNotFound, ModelSummary, RegistryError,
                                    VersionInfo, millis_iso, no_version, resolve, version_info)

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# MLflow's single-tenant rows (mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME); MLflow's
# client filters on it in every query, so this reader does too.
WORKSPACE = "default"
DELETED = "Deleted_Internal"  # MLflow keeps a deleted version's row with this stage


class RegistryView(Protocol):
    """The reads a serving replica makes (:class:`RegistryReader`, or MLflow's
    :class:`maas.registry.Registry`)."""

    def aliases(self, name: str) -> dict[str, int]: ...

    def version_numbers(self, name: str) -> list[int]: ...

    def get(self, name: str, ref: int | str | None = None) -> VersionInfo: ...

    def load(self, info: VersionInfo) -> bytes: ...

    def load_asset(self, info: VersionInfo, filename: str) -> bytes: ...


def is_database(uri: str) -> bool:
    """Whether ``uri`` is a SQLAlchemy database URL (``postgresql+psycopg://`` included)."""
    return uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES


def registry_view(uri: str, key_env: str) -> RegistryView:
    """What a replica reads the registry at ``uri`` with: this module's reader for a
    database, MLflow's client for a tracking server or when MLflow's workspaces are on (the
    reader knows MLflow's default workspace only)."""
    workspaces = os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true")
    if is_database(uri) and not workspaces:
        return RegistryReader(uri, key_env)
    from maas.registry.store import Registry

    return Registry(uri, key_env=key_env)


@cache
def _tables() -> dict[str, Any]:
    """MLflow's registry tables, as much of them as this reader reads. Queried through
    SQLAlchemy's constructs, not SQL text, so that each database quotes its own reserved
    words (``key`` on MySQL and SQL Server)."""
    import sqlalchemy as sa

    def table(name: str, *columns: str) -> Any:
        return sa.table(name, *(sa.column(c) for c in (*columns, "name", "workspace")))

    return {"models": table("registered_models", "description", "last_updated_time"),
            "aliases": table("registered_model_aliases", "alias", "version"),
            "versions": table("model_versions", "version", "creation_time", "description",
                              "run_id", "source", "current_stage"),
            "tags": table("model_version_tags", "key", "value", "version")}


def select(table: str, columns: tuple[str, ...], name: str | None = None,
           version: int | None = None) -> Any:
    """SELECT ``columns`` FROM ``table`` in MLflow's default workspace, for one model (and one
    of its versions) when given, without deleted versions, ordered by the first column."""
    import sqlalchemy as sa

    t = _tables()[table]
    query = sa.select(*(t.c[c] for c in columns)).where(t.c.workspace == WORKSPACE)
    if name is not None:
        query = query.where(t.c.name == name)
    if version is not None:
        query = query.where(t.c.version == version)
    if table == "versions":
        query = query.where(t.c.current_stage != DELETED)
    return query.order_by(t.c[columns[0]])


class RegistryReader:
    """Read-only access to the MLflow registry in the database at ``uri``."""

    def __init__(self, uri: str, key_env: str = "MAAS_MODEL_KEY"):
        self.uri = uri
        self.artifacts = Artifacts(None, key_env, encrypt=False)  # reads only: no client

    @cached_property
    def _engine(self) -> Any:
        import sqlalchemy as sa

        return sa.create_engine(self.uri, pool_pre_ping=not self.uri.startswith("sqlite"))

    def _rows(self, query: Any) -> list[tuple]:
        import sqlalchemy as sa

        try:
            with self._engine.connect() as conn:
                return [tuple(row) for row in conn.execute(query)]
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"the registry at {self._safe_uri()} cannot be read "
                                f"({type(exc).__name__}); is it the MLflow database the "
                                f"pipeline registered into?") from None

    def _safe_uri(self) -> str:
        import sqlalchemy as sa

        try:
            return sa.engine.make_url(self.uri).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return "(a database URL SQLAlchemy cannot parse)"

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version of ``name`` (ModelNotFound when it is not registered)."""
        found = {alias: int(version) for alias, version in
                 self._rows(select("aliases", ("alias", "version"), name))}
        if not found and not self._rows(select("models", ("name",), name)):
            known = [model for (model,) in self._rows(select("models", ("name",)))]
            raise ModelNotFound(f"no registered model {name!r} in {self._safe_uri()}; "
                                f"registered: {known} (run the pipeline to register one)")
        return found

    def version_numbers(self, name: str) -> list[int]:
        return [int(v) for (v,) in self._rows(select("versions", ("version",), name))]

    def get(self, name: str, ref: int | str | None = None) -> VersionInfo:
        """A version by number, or by alias (``None``: ``production``)."""
        aliases = self.aliases(name)
        number = resolve(name, ref, aliases)
        columns = ("version", "name", "creation_time", "description", "run_id", "source")
        rows = (self._rows(select("versions", columns, name, number))
                if 1 <= number <= MAX_VERSION else [])
        if not rows:
            raise no_version(name, ref, self.version_numbers(name))
        version, model, created, description, run_id, source = rows[0]
        tags = dict(self._rows(select("tags", ("key", "value"), name, number)))
        return version_info(SimpleNamespace(
            name=model, version=version, creation_timestamp=created, description=description,
            run_id=run_id, source=source, tags=tags), aliases)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first (ModelNotFound when it is not registered)."""
        self.aliases(name)  # raises ModelNotFound, as MLflow's client does
        return [self.get(name, number) for number in self.version_numbers(name)]

    def models(self) -> list[ModelSummary]:
        """Every registered model, by name, with its aliases and version count."""
        summaries = []
        for name, description, updated in self._rows(
                select("models", ("name", "description", "last_updated_time"))):
            numbers = self.version_numbers(name)
            summaries.append(ModelSummary(
                name=name, description=description or "", aliases=self.aliases(name),
                versions=len(numbers), latest_version=max(numbers, default=None),
                updated_at=millis_iso(updated)))
        return summaries

    def load(self, info: VersionInfo) -> bytes:
        """The verified ONNX bytes of ``info``, decrypted in memory when stored encrypted."""
        return self.artifacts.read(info)

    def load_asset(self, info: VersionInfo, filename: str) -> bytes:
        """The verified bytes of the asset ``filename`` registered with ``info``."""
        return self.artifacts.read_asset(info, filename)
