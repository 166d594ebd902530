"""Bring an access store written by an older maas up to this release's schema, in place.

    AccessStore("sqlite:///state/access.db")   # opening it is enough

``meta.create_all`` creates missing tables but never touches existing ones, so a column a
newer release added (the usage table's ``prompt_tokens``, a key's ``tokens_per_minute``) is
added here with ``ALTER TABLE ... ADD COLUMN``, which SQLite and PostgreSQL both do without
rewriting the rows. Only additions are migrated: every added column is nullable or has a
server default, so the rows already there stay valid and keep their values. Two processes
opening the same old store at once may race to add a column; the loser finds it there.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

log = logging.getLogger(__name__)


def missing_columns(engine: sa.Engine, meta: sa.MetaData) -> list[sa.Column]:
    """Columns of ``meta``'s tables that the database's existing tables lack."""
    inspector = sa.inspect(engine)
    found = []
    for table in meta.sorted_tables:
        if not inspector.has_table(table.name):
            continue  # create_all makes it whole
        present = {column["name"] for column in inspector.get_columns(table.name)}
        found += [column for column in table.columns if column.name not in present]
    return found


def add_missing_columns(engine: sa.Engine, meta: sa.MetaData) -> list[str]:
    """Add every missing column (``table.column`` each, as added); rows are kept."""
    added = []
    for column in missing_columns(engine, meta):
        if not column.nullable and column.server_default is None:
            raise RuntimeError(f"{column.table.name}.{column.name} cannot be added to a store "
                               f"that has rows: give it a server default or make it nullable")
        spec = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
        statement = f"ALTER TABLE {column.table.name} ADD COLUMN {spec}"
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement))
        except sa.exc.DBAPIError:
            # Another process added it first: fine when it is there now.
            if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(
                    column.table.name)}:
                raise
            continue
        added.append(f"{column.table.name}.{column.name}")
    if added:
        log.info("access store migrated: added %s", ", ".join(added))
    return added
