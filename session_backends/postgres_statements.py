"""The PostgreSQL session store's statements, built once from its :class:`~.postgres_schema.Tables`.

Names come from the validated, quoted table identifiers; IDs and values only ever travel as
query parameters. Each group below serves one method of the store.
"""

from __future__ import annotations

from psycopg import sql

from .postgres_schema import Tables

__all__ = ["Statements"]

_LIVE = "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
_KEY = "app_name = %s AND user_id = %s AND session_id = %s"
_EXPIRES = "now() + %s::float8 * interval '1 second'"


def _live(alias: str) -> str:
    """Neither deleted nor expired."""
    return (
        f"{alias}.deleted_at IS NULL AND ({alias}.expires_at IS NULL OR {alias}.expires_at > now())"
    )


def _q(text: str, **names: sql.Composable) -> sql.Composed:
    return sql.SQL(text).format(**names)


class Statements:
    """Every SQL statement the store runs but the DDL (:class:`~.postgres_schema.Tables`).

    Args:
        tables: the store's tables.
        soft_delete: deletes and expiry set ``deleted_at`` (True) or remove rows.
    """

    def __init__(self, tables: Tables, soft_delete: bool) -> None:
        q = _q
        t = tables.names

        def retire(name: str, where: str, *, using: str | None = None) -> str:
            """Soft or hard delete of the rows of ``name`` matching ``where``."""
            if soft_delete:
                head = f"UPDATE {{{name}}} AS x SET deleted_at = now()"
                return head + (f" FROM {using}" if using else "") + f" WHERE {where}"
            head = f"DELETE FROM {{{name}}} AS x"
            return head + (f" USING {using}" if using else "") + f" WHERE {where}"

        same = (
            "x.app_name = gone.app_name AND x.user_id = gone.user_id "
            "AND x.session_id = gone.session_id AND x.deleted_at IS NULL"
        )
        key_x = "x.app_name = %s AND x.user_id = %s AND x.session_id = %s AND x.deleted_at IS NULL"
        expired = "x.deleted_at IS NULL AND x.expires_at <= now()"

        # The expired session under this key (if any), with its events and summaries.
        self.retire_expired_session = q(
            "WITH gone AS ("
            + retire("ss", f"{key_x} AND x.expires_at <= now()")
            + " RETURNING x.app_name, x.user_id, x.session_id), "
            "e AS (" + retire("se", same, using="gone") + " RETURNING 1), "
            "s AS (" + retire("su", same, using="gone") + " RETURNING 1) "
            "SELECT count(*) FROM gone",
            **t,
        )
        self.delete_session = q(
            "WITH a AS (" + retire("ss", key_x) + " RETURNING 1), "
            "e AS (" + retire("se", key_x) + " RETURNING 1), "
            "s AS (" + retire("su", key_x) + " RETURNING 1) "
            "SELECT count(*) FROM a",
            **t,
        )
        self.remove_expired = q(
            "WITH gone AS ("
            + retire("ss", expired)
            + " RETURNING x.app_name, x.user_id, x.session_id), "
            "e AS (" + retire("se", same, using="gone") + " RETURNING 1), "
            "s AS (" + retire("su", same, using="gone") + " RETURNING 1), "
            "f AS (DELETE FROM {sf} AS x USING gone WHERE x.app_name = gone.app_name "
            "AND x.user_id = gone.user_id AND x.session_id = gone.session_id RETURNING 1), "
            "a AS (" + retire("aps", expired) + " RETURNING 1), "
            "u AS (" + retire("uss", expired) + " RETURNING 1) "
            "SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM a) "
            "+ (SELECT count(*) FROM u)",
            **t,
        )
        self.insert_session = q(
            "INSERT INTO {ss} (app_name, user_id, session_id, state, created_at, updated_at, "
            f"expires_at) VALUES (%s, %s, %s, %s::jsonb, %s, %s, {_EXPIRES})",
            **t,
        )

        def user_agg(app: str, user: str) -> str:
            return (
                "(SELECT jsonb_object_agg(u.key, u.value) FROM {uss} AS u "
                f"WHERE u.app_name = {app} AND u.user_id = {user} AND {_live('u')})"
            )

        def app_agg(app: str) -> str:
            return (
                "(SELECT jsonb_object_agg(a.key, a.value) FROM {aps} AS a "
                f"WHERE a.app_name = {app} AND {_live('a')})"
            )

        self.scopes = q(f"SELECT {user_agg('%s', '%s')}::text, {app_agg('%s')}::text", **t)
        s_live = _live("s")
        # One statement (one snapshot, one round trip): the session row as a JSON document
        # at position -1, then the events in append order. Rows beat one big array here:
        # array literals escape every quote of the event JSON.
        self.get_session = q(
            "SELECT -1 AS position, json_build_object("
            "'state', s.state, 'created_at', s.created_at, 'updated_at', s.updated_at, "
            "'event_count', s.event_count, "
            f"'user_state', {user_agg('s.app_name', 's.user_id')}, "
            f"'app_state', {app_agg('s.app_name')}, "
            "'summaries', (SELECT jsonb_object_agg(m.filter_key, m.summary::text) FROM {su} AS m "
            "WHERE m.app_name = s.app_name AND m.user_id = s.user_id "
            "AND m.session_id = s.session_id AND m.deleted_at IS NULL))::text "
            f"FROM {{ss}} AS s WHERE s.app_name = %s AND s.user_id = %s AND s.session_id = %s "
            f"AND {s_live} "
            "UNION ALL SELECT e.position, e.event::text FROM {se} AS e "
            "WHERE e.app_name = %s AND e.user_id = %s AND e.session_id = %s "
            "AND e.deleted_at IS NULL ORDER BY 1",
            **t,
        )
        self.list_sessions = q(
            "SELECT session_id, state::text, created_at, updated_at, event_count FROM {ss} "
            f"WHERE app_name = %s AND user_id = %s AND {_LIVE} ORDER BY created_at, session_id",
            **t,
        )
        self.take_fence = q(
            "INSERT INTO {sf} (app_name, user_id, session_id, token) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (app_name, user_id, session_id) DO UPDATE SET "
            "token = GREATEST({sf}.token, excluded.token) RETURNING token",
            **t,
        )
        self.check_fence = q(f"SELECT token FROM {{sf}} WHERE {_KEY} FOR SHARE", **t)
        self.delete_fence = q(f"DELETE FROM {{sf}} WHERE {_KEY}", **t)
        self.share_session = q(f"SELECT 1 FROM {{ss}} WHERE {_KEY} AND {_LIVE} FOR KEY SHARE", **t)
        # Lock the session row and insert the event at the next position, in one statement
        # (one round trip): the row (id, event_count, first_position, last_user_position)
        # and whether the event was inserted (false: the session holds its ID already). No
        # row: no live session.
        self.lock_and_insert = q(
            "WITH s AS (SELECT id, event_count, first_position, last_user_position FROM {ss} "
            f"WHERE {_KEY} AND {_LIVE} FOR UPDATE), "
            "e AS (INSERT INTO {se} (app_name, user_id, session_id, event_id, position, event, "
            "created_at, updated_at, expires_at) SELECT %s, %s, %s, %s, s.event_count, "
            f"%s::jsonb, %s, %s, {_EXPIRES} FROM s "
            "ON CONFLICT (app_name, user_id, session_id, event_id) WHERE deleted_at IS NULL "
            "DO NOTHING RETURNING 1) "
            "SELECT s.id, s.event_count, s.first_position, s.last_user_position, "
            "EXISTS (SELECT 1 FROM e) FROM s",
            **t,
        )
        self.update_session = q(
            "UPDATE {ss} SET state = state || %s::jsonb, event_count = %s, first_position = %s, "
            f"last_user_position = %s, updated_at = %s, expires_at = {_EXPIRES} WHERE id = %s",
            **t,
        )
        self.evict_events = q(
            f"DELETE FROM {{se}} WHERE {_KEY} AND position < %s AND deleted_at IS NULL", **t
        )
        self.upsert_user_state = q(
            "INSERT INTO {uss} (app_name, user_id, key, value, created_at, updated_at, "
            f"expires_at) SELECT %s, %s, d.k, d.v::jsonb, now(), now(), {_EXPIRES} "
            "FROM unnest(%s::text[], %s::text[]) AS d(k, v) "
            "ON CONFLICT (app_name, user_id, key) WHERE deleted_at IS NULL DO UPDATE SET "
            "value = excluded.value, updated_at = excluded.updated_at, "
            "expires_at = excluded.expires_at",
            **t,
        )
        self.refresh_user_state = q(
            f"UPDATE {{uss}} SET expires_at = {_EXPIRES} WHERE app_name = %s AND user_id = %s "
            f"AND {_LIVE}",
            **t,
        )
        self.upsert_app_state = q(
            "INSERT INTO {aps} (app_name, key, value, created_at, updated_at, expires_at) "
            f"SELECT %s, d.k, d.v::jsonb, now(), now(), {_EXPIRES} "
            "FROM unnest(%s::text[], %s::text[]) AS d(k, v) "
            "ON CONFLICT (app_name, key) WHERE deleted_at IS NULL DO UPDATE SET "
            "value = excluded.value, updated_at = excluded.updated_at, "
            "expires_at = excluded.expires_at",
            **t,
        )
        self.refresh_app_state = q(
            f"UPDATE {{aps}} SET expires_at = {_EXPIRES} WHERE app_name = %s AND {_LIVE}", **t
        )
        self.get_summary = q(
            "SELECT m.summary::text FROM {su} AS m JOIN {ss} AS s ON s.app_name = m.app_name "
            "AND s.user_id = m.user_id AND s.session_id = m.session_id "
            "WHERE m.app_name = %s AND m.user_id = %s AND m.session_id = %s "
            f"AND m.filter_key = %s AND m.deleted_at IS NULL AND {s_live}",
            **t,
        )
        self.put_summary = q(
            "INSERT INTO {su} (app_name, user_id, session_id, filter_key, summary, event_count, "
            "created_at, updated_at) VALUES (%s, %s, %s, %s, %s::jsonb, %s, now(), now()) "
            "ON CONFLICT (app_name, user_id, session_id, filter_key) WHERE deleted_at IS NULL "
            "DO UPDATE SET summary = excluded.summary, event_count = excluded.event_count, "
            "updated_at = excluded.updated_at WHERE {su}.event_count < excluded.event_count "
            "RETURNING 1",
            **t,
        )
