"""The MySQL session store's tables and SQL statements, built once from validated options.

Tables (every name gets ``table_prefix``: ``app1_`` -> ``app1_session_states``):

- ``session_states``     one row per session: state (JSON), ``event_count`` (every event ever
  appended), ``first_position`` (the oldest kept event), ``last_user_position``
- ``session_events``     one row per event: ``event_id``, ``position`` (append order), event JSON
- ``session_summaries``  one row per (session, ``filter_key``), with the summary's ``event_count``
- ``app_states`` / ``user_states``  one row per key, value JSON
- ``session_fences``     one row per fenced session: its owner's fencing token

MySQL has no partial indexes, so uniqueness among live rows is kept as tRPC-Agent-Go keeps it,
with the deletion inside the unique key, but through a generated column ``live`` (1 while
``deleted_at`` is NULL, else NULL) rather than ``deleted_at`` itself: a unique key treats NULLs
as distinct, so ``(app, user, session, deleted_at)`` would let two live rows share a key, while
``(app, user, session, live)`` allows one live row and any number of deleted ones.

IDs are ASCII (the ID rule) and compared byte for byte (``ascii_bin``), state keys, filter keys
and event IDs are ``utf8mb4_bin``: with the server's usual case-insensitive collation ``Alice``
and ``alice`` would be one user. Times are ``DATETIME(6)`` in UTC; expiry is judged by the
server's clock (``UTC_TIMESTAMP(6)``), as PostgreSQL's store uses ``now()``.

Only validated names (the table prefix) and numbers computed here (TTLs in microseconds) are
put into the text; IDs and values always travel as parameters.
"""

from __future__ import annotations

__all__ = [
    "MAX_KEY_LENGTH",
    "TABLES",
    "Statements",
]

#: The longest state key, summary filter key and event ID the tables hold (characters).
MAX_KEY_LENGTH = 255
#: The tables, without the prefix.
TABLES = (
    "session_states",
    "session_events",
    "session_summaries",
    "app_states",
    "user_states",
    "session_fences",
)

_NOW = "UTC_TIMESTAMP(6)"
_LIVE = f"deleted_at IS NULL AND (expires_at IS NULL OR expires_at > {_NOW})"
_KEY = "app_name = %s AND user_id = %s AND session_id = %s"
_ID = "VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"
_NAME = f"VARCHAR({MAX_KEY_LENGTH}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"
_STAMPS = "created_at DATETIME(6) NOT NULL, updated_at DATETIME(6) NOT NULL, "
_TTL = "expires_at DATETIME(6) NULL, "
_DELETED = (
    "deleted_at DATETIME(6) NULL, "
    "live TINYINT GENERATED ALWAYS AS (IF(deleted_at IS NULL, 1, NULL)) STORED"
)
_TABLE_OPTIONS = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"


def _expires(ttl: float | None) -> str:
    """The expiry of a row written now with ``ttl`` seconds, as SQL."""
    if ttl is None:
        return "NULL"
    return f"{_NOW} + INTERVAL {round(ttl * 1_000_000)} MICROSECOND"


class Statements:
    """Every statement the store runs. See the module docstring.

    Args:
        prefix: the table prefix, validated by the store
            (:func:`~runner_core.store_support.check_sql_name`).
        soft_delete: deletes and expiry set ``deleted_at`` (True) or remove rows.
        session_ttl, app_state_ttl, user_state_ttl: seconds, or None for no expiry.
    """

    def __init__(
        self,
        prefix: str,
        *,
        soft_delete: bool,
        session_ttl: float | None,
        app_state_ttl: float | None,
        user_state_ttl: float | None,
    ) -> None:
        self.tables = [prefix + name for name in TABLES]
        ss, se, su, aps, uss, sf = (f"`{name}`" for name in self.tables)
        #: A server-wide lock name: schema creation by many workers at once runs once.
        self.lock_name = f"agent-runner-sessions:{prefix}"
        self.ddl = [
            f"CREATE TABLE IF NOT EXISTS {ss} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            f"app_name {_ID}, user_id {_ID}, session_id {_ID}, state JSON NOT NULL, "
            "event_count BIGINT NOT NULL DEFAULT 0, first_position BIGINT NOT NULL DEFAULT 0, "
            f"last_user_position BIGINT NOT NULL DEFAULT -1, {_STAMPS}{_TTL}{_DELETED}, "
            "UNIQUE KEY session_states_unique_live (app_name, user_id, session_id, live), "
            f"KEY session_states_expires (expires_at)){_TABLE_OPTIONS}",
            f"CREATE TABLE IF NOT EXISTS {se} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            f"app_name {_ID}, user_id {_ID}, session_id {_ID}, event_id {_NAME}, "
            "position BIGINT NOT NULL, event JSON NOT NULL, created_at DATETIME(6) NOT NULL, "
            f"{_DELETED}, "
            "UNIQUE KEY session_events_unique_live (app_name, user_id, session_id, event_id, "
            "live), KEY session_events_position (app_name, user_id, session_id, position))"
            f"{_TABLE_OPTIONS}",
            f"CREATE TABLE IF NOT EXISTS {su} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            f"app_name {_ID}, user_id {_ID}, session_id {_ID}, filter_key {_NAME}, "
            f"summary JSON NOT NULL, event_count BIGINT NOT NULL, {_STAMPS}{_DELETED}, "
            "UNIQUE KEY session_summaries_unique_live (app_name, user_id, session_id, "
            f"filter_key, live)){_TABLE_OPTIONS}",
            f"CREATE TABLE IF NOT EXISTS {aps} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            f"app_name {_ID}, `key` {_NAME}, value JSON NOT NULL, {_STAMPS}{_TTL}{_DELETED}, "
            "UNIQUE KEY app_states_unique_live (app_name, `key`, live), "
            f"KEY app_states_expires (expires_at)){_TABLE_OPTIONS}",
            f"CREATE TABLE IF NOT EXISTS {uss} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
            f"app_name {_ID}, user_id {_ID}, `key` {_NAME}, value JSON NOT NULL, "
            f"{_STAMPS}{_TTL}{_DELETED}, "
            "UNIQUE KEY user_states_unique_live (app_name, user_id, `key`, live), "
            f"KEY user_states_expires (expires_at)){_TABLE_OPTIONS}",
            f"CREATE TABLE IF NOT EXISTS {sf} (app_name {_ID}, user_id {_ID}, "
            f"session_id {_ID}, token BIGINT NOT NULL, "
            f"PRIMARY KEY (app_name, user_id, session_id)){_TABLE_OPTIONS}",
        ]
        self.count_tables = (
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
            f"AND table_name IN ({', '.join(['%s'] * len(self.tables))})"
        )

        def retire(table: str, where: str) -> str:
            """Soft or hard delete of the rows of ``table`` matching ``where``."""
            if soft_delete:
                return f"UPDATE {table} SET deleted_at = {_NOW} WHERE {where}"
            return f"DELETE FROM {table} WHERE {where}"

        live_key = f"{_KEY} AND deleted_at IS NULL"
        self.retire_expired_session = retire(ss, f"{live_key} AND expires_at <= {_NOW}")
        self.retire_session = retire(ss, live_key)
        self.retire_events = retire(se, live_key)
        self.retire_summaries = retire(su, live_key)
        self.delete_fence = f"DELETE FROM {sf} WHERE {_KEY}"

        # The sweep: one time (a parameter) for every statement, so that a session expiring
        # between two of them cannot lose its row and keep its events.
        def joined(table: str) -> str:
            """The rows of ``table`` that belong to sessions expired at the time given."""
            on = (
                f"{table} AS x JOIN {ss} AS s ON x.app_name = s.app_name "
                "AND x.user_id = s.user_id AND x.session_id = s.session_id"
            )
            where = "s.deleted_at IS NULL AND s.expires_at <= %s"
            if soft_delete:
                return f"UPDATE {on} SET x.deleted_at = %s WHERE {where} AND x.deleted_at IS NULL"
            return f"DELETE x FROM {on} WHERE {where}"

        def expired(table: str) -> str:
            where = "deleted_at IS NULL AND expires_at <= %s"
            if soft_delete:
                return f"UPDATE {table} SET deleted_at = %s WHERE {where}"
            return f"DELETE FROM {table} WHERE {where}"

        self.sweep_events = joined(se)
        self.sweep_summaries = joined(su)
        self.sweep_fences = (
            f"DELETE x FROM {sf} AS x JOIN {ss} AS s ON x.app_name = s.app_name "
            "AND x.user_id = s.user_id AND x.session_id = s.session_id "
            "WHERE s.deleted_at IS NULL AND s.expires_at <= %s"
        )
        self.sweep_sessions = expired(ss)
        self.sweep_app_states = expired(aps)
        self.sweep_user_states = expired(uss)
        #: How many times the sweep statements (but ``sweep_fences``) take the sweep's time.
        self.sweep_times = 2 if soft_delete else 1

        self.insert_session = (
            f"INSERT INTO {ss} (app_name, user_id, session_id, state, created_at, updated_at, "
            f"expires_at) VALUES (%s, %s, %s, %s, %s, %s, {_expires(session_ttl)})"
        )
        # One statement, one snapshot: the session row (kind 0), its user and app state (1,
        # 2), summaries (3) and events in append order (4).
        self.get_session = (
            "SELECT 0 AS kind, -1 AS pos, NULL AS name, state AS body, event_count AS n, "
            f"created_at AS t1, updated_at AS t2 FROM {ss} WHERE {_KEY} AND {_LIVE} "
            f"UNION ALL SELECT 1, 0, `key`, value, NULL, NULL, NULL FROM {uss} "
            f"WHERE app_name = %s AND user_id = %s AND {_LIVE} "
            f"UNION ALL SELECT 2, 0, `key`, value, NULL, NULL, NULL FROM {aps} "
            f"WHERE app_name = %s AND {_LIVE} "
            f"UNION ALL SELECT 3, 0, filter_key, summary, NULL, NULL, NULL FROM {su} "
            f"WHERE {live_key} "
            f"UNION ALL SELECT 4, position, NULL, event, NULL, NULL, NULL FROM {se} "
            f"WHERE {live_key} ORDER BY kind, pos"
        )
        self.list_sessions = (
            f"SELECT session_id, state, created_at, updated_at, event_count FROM {ss} "
            f"WHERE app_name = %s AND user_id = %s AND {_LIVE} ORDER BY created_at, session_id"
        )
        self.scopes = (
            f"SELECT 1, `key`, value FROM {uss} WHERE app_name = %s AND user_id = %s AND {_LIVE} "
            f"UNION ALL SELECT 2, `key`, value FROM {aps} WHERE app_name = %s AND {_LIVE}"
        )
        self.take_fence = (
            f"INSERT INTO {sf} (app_name, user_id, session_id, token) VALUES (%s, %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE token = GREATEST(token, VALUES(token))"
        )
        self.read_fence = f"SELECT token FROM {sf} WHERE {_KEY}"
        self.share_fence = f"SELECT token FROM {sf} WHERE {_KEY} LOCK IN SHARE MODE"
        self.lock_session = (
            "SELECT id, event_count, first_position, last_user_position, state "
            f"FROM {ss} WHERE {_KEY} AND {_LIVE} FOR UPDATE"
        )
        self.share_session = f"SELECT 1 FROM {ss} WHERE {_KEY} AND {_LIVE} LOCK IN SHARE MODE"
        self.insert_event = (
            f"INSERT INTO {se} (app_name, user_id, session_id, event_id, position, event, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        self.update_session = (
            f"UPDATE {ss} SET state = %s, event_count = %s, first_position = %s, "
            "last_user_position = %s, updated_at = %s, "
            f"expires_at = {_expires(session_ttl)} WHERE id = %s"
        )
        self.evict_events = (
            f"DELETE FROM {se} WHERE {_KEY} AND position < %s AND deleted_at IS NULL"
        )
        self._upsert_user = (
            f"INSERT INTO {uss} (app_name, user_id, `key`, value, created_at, updated_at, "
            "expires_at) VALUES ",
            f"(%s, %s, %s, %s, {_NOW}, {_NOW}, {_expires(user_state_ttl)})",
        )
        self._upsert_app = (
            f"INSERT INTO {aps} (app_name, `key`, value, created_at, updated_at, expires_at) "
            "VALUES ",
            f"(%s, %s, %s, {_NOW}, {_NOW}, {_expires(app_state_ttl)})",
        )
        self.refresh_user_state = (
            None
            if user_state_ttl is None
            else f"UPDATE {uss} SET expires_at = {_expires(user_state_ttl)} "
            f"WHERE app_name = %s AND user_id = %s AND {_LIVE}"
        )
        self.refresh_app_state = (
            None
            if app_state_ttl is None
            else f"UPDATE {aps} SET expires_at = {_expires(app_state_ttl)} "
            f"WHERE app_name = %s AND {_LIVE}"
        )
        self.get_summary = (
            f"SELECT m.summary FROM {su} AS m JOIN {ss} AS s ON s.app_name = m.app_name "
            "AND s.user_id = m.user_id AND s.session_id = m.session_id "
            "WHERE m.app_name = %s AND m.user_id = %s AND m.session_id = %s "
            "AND m.filter_key = %s AND m.deleted_at IS NULL AND s.deleted_at IS NULL "
            f"AND (s.expires_at IS NULL OR s.expires_at > {_NOW})"
        )
        # Stored only if it covers more events: MySQL assigns left to right, so event_count
        # changes last. Affected rows: 1 inserted, 2 replaced, 0 kept the stored one.
        newer = "event_count < VALUES(event_count)"
        self.put_summary = (
            f"INSERT INTO {su} (app_name, user_id, session_id, filter_key, summary, "
            f"event_count, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, {_NOW}, "
            f"{_NOW}) ON DUPLICATE KEY UPDATE summary = IF({newer}, VALUES(summary), summary), "
            f"updated_at = IF({newer}, VALUES(updated_at), updated_at), "
            "event_count = GREATEST(event_count, VALUES(event_count))"
        )

    def upsert_user_state(self, rows: int) -> str:
        """Insert or replace ``rows`` user-state keys (app, user, key, value per row)."""
        head, row = self._upsert_user
        return head + ", ".join([row] * rows) + _UPSERT_TAIL

    def upsert_app_state(self, rows: int) -> str:
        """Insert or replace ``rows`` app-state keys (app, key, value per row)."""
        head, row = self._upsert_app
        return head + ", ".join([row] * rows) + _UPSERT_TAIL


# VALUES(col) is what MariaDB and MySQL 8 both accept (MySQL 8.0.20+ deprecates it in favour
# of a row alias, which MariaDB does not know).
_UPSERT_TAIL = (
    " ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at), "
    "expires_at = VALUES(expires_at)"
)
