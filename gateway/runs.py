"""Whose a run is, as every gateway instance sees it: the gateway's run record in Redis.

The gateway keeps nothing in memory. When it submits a run it first records the run's owner
(app, user, session) under ``{prefix}:gateway-run:{invocation_id}`` (a day, like the owner key
the workers write), so that any instance can authorize a request for that run, even while it
waits in the queue. A run submitted some other way is found by the owner key its worker wrote
(``{prefix}:owner:{id}``, :func:`workers.bus.owner_identity`).

A key sees only its own user's runs: for another user's run, or one nobody knows, the answer
is the same :class:`~gateway.errors.NotFoundError`, so a key learns nothing about IDs it does
not own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from runner_core.wire import OWNER_TTL_S, owner_key

from .errors import NotFoundError
from .settings import ApiKey

__all__ = ["RunOwner", "authorize", "forget_run", "record_run", "run_owner", "run_record_key"]


def run_record_key(invocation_id: str, prefix: str) -> str:
    """The gateway's record of a run it submitted: ``{prefix}:gateway-run:{invocation_id}``."""
    return f"{prefix}:gateway-run:{invocation_id}"


@dataclass(frozen=True, slots=True)
class RunOwner:
    """The (app, user, session) a run belongs to."""

    app_name: str
    user_id: str
    session_id: str

    def to_json(self) -> str:
        return json.dumps([self.app_name, self.user_id, self.session_id], separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> RunOwner | None:
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
            return cls(value[0], value[1], value[2])
        return None


async def record_run(
    redis: aioredis.Redis, invocation_id: str, owner: RunOwner, *, prefix: str
) -> None:
    """Record the owner of a run about to be submitted (kept as long as the owner key)."""
    await redis.set(run_record_key(invocation_id, prefix), owner.to_json(), ex=OWNER_TTL_S)


async def forget_run(redis: aioredis.Redis, invocation_id: str, *, prefix: str) -> None:
    """Remove the record of a run that was then not sent."""
    await redis.delete(run_record_key(invocation_id, prefix))


async def run_owner(redis: aioredis.Redis, invocation_id: str, *, prefix: str) -> RunOwner | None:
    """The owner of a run: the gateway's record, else the workers' owner key, else None."""
    record, owner = await redis.mget(
        [run_record_key(invocation_id, prefix), owner_key(invocation_id, prefix)]
    )
    for raw in (record, owner):
        if raw is not None and (found := RunOwner.from_json(raw)) is not None:
            return found
    return None


async def authorize(
    redis: aioredis.Redis, key: ApiKey, invocation_id: str, *, prefix: str
) -> RunOwner:
    """The owner of a run that ``key`` may act on.

    Raises:
        NotFoundError: the run is unknown or another user's (the same answer for both).
    """
    owner = await run_owner(redis, invocation_id, prefix=prefix)
    if owner is None or not (key.is_operator or owner.user_id == key.user_id):
        raise NotFoundError(
            f"no run {invocation_id!r} is known for this API key. Check the ID (POST /v1/runs "
            "returned it); runs are kept a day after their last event."
        )
    return owner
