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


def _expires(ttl: float | None) -> sql.Composable:
    """``expires_at`` for a write now, with a store's TTL as a literal (NULL: none)."""
    if ttl is None:
        return sql.SQL("NULL::timestamptz")
    return sql.SQL("now() + {ttl} * interval '1 second'").format(ttl=sql.Literal(float(ttl)))


def _scope_writes(
    after: str,
    user_state_ttl: float | None,
    app_state_ttl: float | None,
    *,
    user: bool = True,
    app: bool = True,
) -> list[str]:
    """The steps of a statement that upsert ``%(user_delta)s`` and ``%(app_delta)s`` (JSON
    objects, NULL: none), only if the step ``after`` wrote a row. A TTL counts from the last
    write of the scope: a write of some keys refreshes the others (the keys written get their
    expiry from the upsert). ``user``/``app`` False: for writes without that scope's delta,
    with no step for it (an empty step still costs the executor a few percent of an append).
    Format with ``user_expires`` and ``app_expires``."""
    live = "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    steps = [
        "us AS (INSERT INTO {uss} (app_name, user_id, key, value, created_at, updated_at, "
        "expires_at) SELECT %(app)s, %(user)s, d.k, d.v, now(), now(), "
        "{user_expires} FROM jsonb_each(%(user_delta)s::jsonb) AS d(k, v) "
        f"WHERE EXISTS (SELECT FROM {after}) "
        "ON CONFLICT (app_name, user_id, key) WHERE deleted_at IS NULL DO UPDATE SET "
        "value = excluded.value, updated_at = excluded.updated_at, "
        "expires_at = excluded.expires_at RETURNING 1)",
        "ap AS (INSERT INTO {aps} (app_name, key, value, created_at, updated_at, "
        "expires_at) SELECT %(app)s, d.k, d.v, now(), now(), {app_expires} "
        "FROM jsonb_each(%(app_delta)s::jsonb) AS d(k, v) "
        f"WHERE EXISTS (SELECT FROM {after}) "
        "ON CONFLICT (app_name, key) WHERE deleted_at IS NULL DO UPDATE SET "
        "value = excluded.value, updated_at = excluded.updated_at, "
        "expires_at = excluded.expires_at RETURNING 1)",
    ]
    if user_state_ttl is not None:
        steps.append(
            "ur AS (UPDATE {uss} SET expires_at = {user_expires} WHERE app_name = %(app)s "
            f"AND user_id = %(user)s AND {live} AND NOT %(user_delta)s::jsonb ? key "
            f"AND EXISTS (SELECT FROM {after}) RETURNING 1)"
        )
    if app_state_ttl is not None:
        steps.append(
            "ar AS (UPDATE {aps} SET expires_at = {app_expires} WHERE app_name = %(app)s "
            f"AND {live} AND NOT %(app_delta)s::jsonb ? key AND EXISTS (SELECT FROM {after}) "
            "RETURNING 1)"
        )
    unused: tuple[str, ...] = () if user else ("us ", "ur ")
    unused += () if app else ("ap ", "ar ")
    return [step for step in steps if not step.startswith(unused)]


def _q(text: str, **names: sql.Composable) -> bytes:
    """The statement as the bytes sent, rendered once: psycopg would render a ``Composed``
    again at every execution (a tenth of an append's client time). Rendering needs no
    connection: names are plain ASCII (checked by :class:`~.postgres_schema.Tables`),
    literals are numbers."""
    return sql.SQL(text).format(**names).as_bytes(None)


class Statements:
    """Every SQL statement the store runs but the DDL (:class:`~.postgres_schema.Tables`).

    Args:
        tables: the store's tables.
        soft_delete: deletes and expiry set ``deleted_at`` (True) or remove rows.
        event_limit, session_ttl, user_state_ttl, app_state_ttl: the store's options
            (checked), written into the append statements as literals.
    """

    def __init__(
        self,
        tables: Tables,
        soft_delete: bool,
        *,
        event_limit: int | None = None,
        session_ttl: float | None = None,
        user_state_ttl: float | None = None,
        app_state_ttl: float | None = None,
    ) -> None:
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

        def read_rows(app: str, user: str, sid: str) -> str:
            """The rows of a session read (see get_session), without the ORDER BY."""
            return (
                "SELECT -1 AS position, json_build_object("
                "'state', s.state, 'created_at', s.created_at, 'updated_at', s.updated_at, "
                "'event_count', s.event_count, "
                f"'user_state', {user_agg('s.app_name', 's.user_id')}, "
                f"'app_state', {app_agg('s.app_name')}, "
                "'summaries', (SELECT jsonb_object_agg(m.filter_key, m.summary::text) "
                "FROM {su} AS m WHERE m.app_name = s.app_name AND m.user_id = s.user_id "
                "AND m.session_id = s.session_id AND m.deleted_at IS NULL))::text "
                f"FROM {{ss}} AS s WHERE s.app_name = {app} AND s.user_id = {user} "
                f"AND s.session_id = {sid} AND {s_live} "
                "UNION ALL SELECT e.position, e.event::text FROM {se} AS e "
                f"WHERE e.app_name = {app} AND e.user_id = {user} AND e.session_id = {sid} "
                "AND e.deleted_at IS NULL AND e.position >= (SELECT s.first_position "
                f"FROM {{ss}} AS s WHERE s.app_name = {app} AND s.user_id = {user} "
                f"AND s.session_id = {sid} AND {s_live})"
            )

        # One statement (one snapshot, one round trip): the session row as a JSON document
        # at position -1, then the events in append order from the session's first kept
        # position (see the eviction note of _append). Rows beat one big array here:
        # array literals escape every quote of the event JSON.
        self.get_session = q(read_rows("%s", "%s", "%s") + " ORDER BY 1", **t)
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
        # create_session as one statement (one round trip, one transaction): retire an
        # expired session under the key (with its events and summaries), insert the new row
        # (a live one under the key fails on the unique index and undoes the statement),
        # upsert the initial user and app state; return the scopes as they were before this
        # statement (the caller merges the deltas it wrote). The insert reads `gone` so that
        # it runs after the retirement. Parameters: app, user, sid, state, now, user_delta,
        # app_delta.
        key_n = (
            "x.app_name = %(app)s AND x.user_id = %(user)s AND x.session_id = %(sid)s "
            "AND x.deleted_at IS NULL"
        )
        def retire_expired(condition: str) -> list[str]:
            """The steps that retire an expired session under the key (``gone``) with its
            events and summaries, when ``condition`` (SQL after AND, or "") holds."""
            return [
                "gone AS ("
                + retire("ss", f"{key_n} AND x.expires_at <= now(){condition}")
                + " RETURNING x.app_name, x.user_id, x.session_id)",
                "ge AS (" + retire("se", same, using="gone") + " RETURNING 1)",
                "gs AS (" + retire("su", same, using="gone") + " RETURNING 1)",
            ]

        self.create_session = _q(
            "WITH " + ", ".join(retire_expired("")) + ", "
            "n AS (INSERT INTO {ss} (app_name, user_id, session_id, state, created_at, "
            "updated_at, expires_at) SELECT %(app)s, %(user)s, %(sid)s, %(state)s::jsonb, "
            "%(now)s, %(now)s, {session_expires} WHERE (SELECT count(*) FROM gone) >= 0 "
            "RETURNING 1), "
            + ", ".join(_scope_writes("n", user_state_ttl, app_state_ttl))
            + f" SELECT {user_agg('%(app)s', '%(user)s')}::text, {app_agg('%(app)s')}::text",
            session_expires=_expires(session_ttl),
            user_expires=_expires(user_state_ttl),
            app_expires=_expires(app_state_ttl),
            **t,
        )
        # open_session as one statement (see the store's method): take the fence (fenced
        # only), create the session if no live one is there (retiring an expired one, as
        # create_session does; nothing when the fence is another owner's or %(create)s is
        # false), then read it. The read sees the snapshot from before the statement: a
        # session created here comes from the insert's RETURNING instead (no events, no
        # summaries, the scopes as they are). Rows: (-2, fence token) when fenced, then the
        # rows of get_session. No -1 row at all: missing and not created, or created by a
        # concurrent call after this statement's snapshot (the caller reads again).
        # Parameters: app, user, sid, now, create, and fence when fenced.
        def open_statement(fenced: bool) -> bytes:
            fence_ok = " AND (SELECT token FROM f) = %(fence)s" if fenced else ""
            steps = []
            if fenced:
                steps.append(
                    "f AS (INSERT INTO {sf} (app_name, user_id, session_id, token) "
                    "VALUES (%(app)s, %(user)s, %(sid)s, %(fence)s) "
                    "ON CONFLICT (app_name, user_id, session_id) DO UPDATE SET "
                    "token = GREATEST({sf}.token, excluded.token) RETURNING token)"
                )
            steps += [
                *retire_expired(f" AND %(create)s{fence_ok}"),
                "n AS (INSERT INTO {ss} (app_name, user_id, session_id, state, created_at, "
                "updated_at, expires_at) SELECT %(app)s, %(user)s, %(sid)s, '{{}}'::jsonb, "
                f"%(now)s, %(now)s, {{session_expires}} WHERE %(create)s{fence_ok} "
                "AND (SELECT count(*) FROM gone) >= 0 "
                "ON CONFLICT (app_name, user_id, session_id) WHERE deleted_at IS NULL "
                "DO NOTHING RETURNING created_at)",
            ]
            head = "SELECT -2 AS position, (SELECT token FROM f)::text UNION ALL " if fenced else ""
            created = (
                "SELECT -1, json_build_object('state', '{{}}'::jsonb, "
                "'created_at', n.created_at, 'updated_at', n.created_at, 'event_count', 0, "
                f"'user_state', {user_agg('%(app)s', '%(user)s')}, "
                f"'app_state', {app_agg('%(app)s')}, 'summaries', NULL)::text FROM n"
            )
            return _q(
                "WITH " + ", ".join(steps) + " " + head + created + " UNION ALL "
                + read_rows("%(app)s", "%(user)s", "%(sid)s") + " ORDER BY 1",
                session_expires=_expires(session_ttl),
                **t,
            )  # fmt: skip

        self.open_session = open_statement(False)
        self.open_session_fenced = open_statement(True)
        options = (event_limit, session_ttl, user_state_ttl, app_state_ttl)
        #: The append statements by (fenced, has a user-state delta, has an app-state delta,
        #: may evict). Without a limit the last is always False (no statement evicts).
        self.appends = {
            (fenced, user, app, evict): self._append(
                tables, fenced, user, app, evict and bool(event_limit), *options
            )
            for fenced in (False, True)
            for user in (False, True)
            for app in (False, True)
            for evict in (False, True)
        }

    @staticmethod
    def _append(
        tables: Tables,
        fenced: bool,
        user: bool,
        app: bool,
        evict: bool,
        event_limit: int | None,
        session_ttl: float | None,
        user_state_ttl: float | None,
        app_state_ttl: float | None,
    ) -> bytes:
        """A whole append as one statement: one round trip, one implicit transaction, and
        the same writes a bare driver would make (one update, one insert, one upsert).

        In order: (fenced only) read the session's fence ``FOR SHARE`` and go on only if it
        holds ``%(fence)s``; update the live session row (which locks it: appends to one
        session queue here, from any number of processes, and each sees the row as the one
        before it left it) with the state delta, the count, the first kept position and the
        latest user message; insert the event at the position the update gave it; evict
        the events before the first kept position; upsert the user and app state deltas.
        An event ID the session holds already fails the insert on the unique index
        (``UniqueViolation``), which undoes the whole statement: duplicates are rare
        (retries), so they pay instead of every append paying for ``ON CONFLICT``.

        Returns one row: the fence's token (fenced only; NULL: no fence) and the new event
        count (NULL: nothing written, no live session or the fence is another owner's).

        The eviction rule is :func:`runner_core.session.first_kept_position`, copied into the
        update below (the conformance suite checks this copy against it). Event rows before
        the first kept position that a concurrent append committed after this statement's
        snapshot are not seen by its ``DELETE``: reads skip them (they read from the session
        row's ``first_position``) and the next append's ``DELETE`` removes them.

        Parameters: app, user, sid, event_id, event (JSON text), now, is_user, and the state
        delta split by scope as JSON objects: delta (the session's), user_delta and app_delta
        (in the variants with ``user``/``app`` True); fence when fenced. The event limit and
        TTLs are literals: they are fixed for a store.
        """

        # first_kept_position(first=x.first_position, count=x.event_count + 1,
        # last_user=<below>, limit=event_limit), on the row as it was before this update.
        count, first = "(x.event_count + 1)", "x.first_position"
        last_user = "(CASE WHEN %(is_user)s THEN x.event_count ELSE x.last_user_position END)"
        if event_limit:
            limit = str(int(event_limit))  # an int (checked): a literal, like the TTLs
            first_kept = (
                f"CASE WHEN {count} - {first} <= {limit} THEN {first} "
                f"WHEN {first} <= {last_user} AND {last_user} < {count} - {limit} "
                f"THEN {last_user} ELSE {count} - {limit} END"
            )
        else:
            first_kept = first
        parts = []
        if fenced:
            parts.append(
                "f AS (SELECT token FROM {sf} WHERE app_name = %(app)s AND user_id = %(user)s "
                "AND session_id = %(sid)s FOR SHARE)"
            )
        parts += [
            "u AS (UPDATE {ss} AS x SET state = x.state || %(delta)s::jsonb, "
            f"event_count = {count}, first_position = {first_kept}, "
            f"last_user_position = {last_user}, updated_at = %(now)s, "
            "expires_at = {session_expires} WHERE x.app_name = %(app)s "
            "AND x.user_id = %(user)s AND x.session_id = %(sid)s "
            "AND x.deleted_at IS NULL AND (x.expires_at IS NULL OR x.expires_at > now())"
            + (" AND (SELECT token FROM f) = %(fence)s" if fenced else "")
            + " RETURNING x.event_count AS count, x.first_position AS first)",
            "e AS (INSERT INTO {se} (app_name, user_id, session_id, event_id, position, event, "
            "created_at, updated_at, expires_at) SELECT %(app)s, %(user)s, %(sid)s, "
            "%(event_id)s, u.count - 1, %(event)s::jsonb, %(now)s, %(now)s, {session_expires} "
            "FROM u RETURNING 1)",
            *_scope_writes("u", user_state_ttl, app_state_ttl, user=user, app=app),
        ]
        if evict:
            # An append that evicted leaves at least `limit` events (more when widened to the
            # latest user message): below that, skip the index scan (a tenth of the statement).
            # Without `evict` (the caller's session is below its limit) the step is left out:
            # even skipped, it costs the executor ~3% of an append. The window still moves
            # (first_position above), so rows it leaves behind are never read; the next
            # append with `evict` removes them.
            parts.append(
                "d AS (DELETE FROM {se} WHERE (SELECT count - first >= {limit} FROM u) "
                "AND app_name = %(app)s AND user_id = %(user)s AND session_id = %(sid)s "
                "AND position < (SELECT first FROM u) AND deleted_at IS NULL RETURNING 1)"
            )
        select = "SELECT " + ("(SELECT token FROM f), " if fenced else "NULL::bigint, ")
        return _q(
            "WITH " + ", ".join(parts) + " " + select + "(SELECT count FROM u)",
            limit=sql.Literal(event_limit or 0),
            session_expires=_expires(session_ttl),
            user_expires=_expires(user_state_ttl),
            app_expires=_expires(app_state_ttl),
            **tables.names,
        )
