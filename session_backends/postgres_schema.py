"""The PostgreSQL session store's tables, built once from validated names.

Tables (names get ``table_prefix`` and live in ``schema`` when set; e.g. ``tenant_a.app1_...``):

- ``session_states``     one row per session: state (JSONB), ``event_count`` (every event ever
  appended), ``first_position`` (the oldest kept event), ``last_user_position``
- ``session_events``     one row per event: ``event_id``, ``position`` (append order), event JSONB
- ``session_summaries``  one row per (session, ``filter_key``), with the summary's ``event_count``
- ``app_states`` / ``user_states``  one row per key, value JSONB
- ``session_fences``     one row per fenced session: the fencing token of its owner
  (``take_fence``), apart from ``session_states`` because the session may not exist yet

Every table but the fences has ``expires_at`` and ``deleted_at``; uniqueness holds among live
rows only (partial unique indexes ``WHERE deleted_at IS NULL``), so a deleted session's ID can
be used again. ``schema`` and ``table_prefix`` are checked against a strict pattern and always
quoted with :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

import zlib

from psycopg import sql

from runner_core.store_support import check_sql_name

__all__ = ["Tables"]


def _q(text: str, **names: sql.Composable) -> sql.Composed:
    return sql.SQL(text).format(**names)


class Tables:
    """The six tables' names, every table and index (to check that all exist), and the DDL
    that creates what is missing.

    Args:
        schema: the schema holding the tables (created if missing); None uses the search path.
        prefix: put before every table and index name.

    Raises:
        ConfigurationError: ``schema`` or ``prefix`` is not a plain SQL name.
    """

    def __init__(self, schema: str | None, prefix: str) -> None:
        if schema is not None:
            check_sql_name(schema, "schema", longest=40)
        if prefix:
            check_sql_name(prefix, "table_prefix", longest=30)

        def table(name: str) -> sql.Identifier:
            return (
                sql.Identifier(schema, prefix + name) if schema else sql.Identifier(prefix + name)
            )

        q = _q
        ss, se, su = table("session_states"), table("session_events"), table("session_summaries")
        aps, uss, sf = table("app_states"), table("user_states"), table("session_fences")
        self.ss, self.se, self.su, self.aps, self.uss, self.sf = ss, se, su, aps, uss, sf
        #: The names to format statements with: {ss}, {se}, {su}, {aps}, {uss}, {sf}.
        self.names: dict[str, sql.Composable] = {
            "ss": ss, "se": se, "su": su, "aps": aps, "uss": uss, "sf": sf
        }  # fmt: skip
        #: The advisory lock that serialises schema creation by many workers.
        self.lock_key = zlib.crc32(f"agent-runner-sessions:{schema}.{prefix}".encode())

        #: The unique index on live sessions' keys (what creating a live one again violates).
        self.session_index = prefix + "session_states_unique_active"
        #: The unique index on live events' IDs (what a duplicate append violates).
        self.event_id_index = prefix + "session_events_unique_active"
        #: Every table and index, schema-qualified: all present means nothing to create.
        self.objects: list[sql.Identifier] = [ss, se, su, aps, uss, sf]

        def ix(name: str) -> sql.Identifier:
            self.objects.append(table(name))
            return sql.Identifier(f"{prefix}{name}")

        stamps = (
            "created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, "
            "expires_at TIMESTAMPTZ, deleted_at TIMESTAMPTZ"
        )
        ids = "app_name VARCHAR(128) NOT NULL, user_id VARCHAR(128) NOT NULL, "
        sid = "session_id VARCHAR(128) NOT NULL, "
        self.ddl: list[sql.Composed] = []
        if schema:
            self.ddl.append(q("CREATE SCHEMA IF NOT EXISTS {s}", s=sql.Identifier(schema)))
        self.ddl += [
            q(
                "CREATE TABLE IF NOT EXISTS {ss} (id BIGSERIAL PRIMARY KEY, "
                + ids
                + sid
                + "state JSONB NOT NULL DEFAULT '{{}}'::jsonb, "
                "event_count BIGINT NOT NULL DEFAULT 0, "
                "first_position BIGINT NOT NULL DEFAULT 0, "
                "last_user_position BIGINT NOT NULL DEFAULT -1, " + stamps + ")",
                ss=ss,
            ),
            q(
                "CREATE UNIQUE INDEX IF NOT EXISTS {ix} ON {ss} (app_name, user_id, session_id) "
                "WHERE deleted_at IS NULL",
                ix=ix("session_states_unique_active"),
                ss=ss,
            ),
            q(
                "CREATE INDEX IF NOT EXISTS {ix} ON {ss} (expires_at) "
                "WHERE deleted_at IS NULL AND expires_at IS NOT NULL",
                ix=ix("session_states_expires"),
                ss=ss,
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {se} (id BIGSERIAL PRIMARY KEY, "
                + ids
                + sid
                + "event_id TEXT NOT NULL, position BIGINT NOT NULL, event JSONB NOT NULL, "
                + stamps
                + ")",
                se=se,
            ),
            q(
                "CREATE UNIQUE INDEX IF NOT EXISTS {ix} ON {se} "
                "(app_name, user_id, session_id, event_id) WHERE deleted_at IS NULL",
                ix=ix("session_events_unique_active"),
                se=se,
            ),
            q(
                "CREATE INDEX IF NOT EXISTS {ix} ON {se} (app_name, user_id, session_id, position)"
                " WHERE deleted_at IS NULL",
                ix=ix("session_events_position"),
                se=se,
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {su} (id BIGSERIAL PRIMARY KEY, "
                + ids
                + sid
                + "filter_key TEXT NOT NULL, summary JSONB NOT NULL, "
                "event_count BIGINT NOT NULL, " + stamps + ")",
                su=su,
            ),
            q(
                "CREATE UNIQUE INDEX IF NOT EXISTS {ix} ON {su} "
                "(app_name, user_id, session_id, filter_key) WHERE deleted_at IS NULL",
                ix=ix("session_summaries_unique_active"),
                su=su,
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {aps} (id BIGSERIAL PRIMARY KEY, "
                "app_name VARCHAR(128) NOT NULL, key TEXT NOT NULL, value JSONB, " + stamps + ")",
                aps=aps,
            ),
            q(
                "CREATE UNIQUE INDEX IF NOT EXISTS {ix} ON {aps} (app_name, key) "
                "WHERE deleted_at IS NULL",
                ix=ix("app_states_unique_active"),
                aps=aps,
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {uss} (id BIGSERIAL PRIMARY KEY, "
                + ids
                + "key TEXT NOT NULL, value JSONB, "
                + stamps
                + ")",
                uss=uss,
            ),
            q(
                "CREATE UNIQUE INDEX IF NOT EXISTS {ix} ON {uss} (app_name, user_id, key) "
                "WHERE deleted_at IS NULL",
                ix=ix("user_states_unique_active"),
                uss=uss,
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {sf} ("
                + ids
                + sid
                + "token BIGINT NOT NULL, PRIMARY KEY (app_name, user_id, session_id))",
                sf=sf,
            ),
        ]
