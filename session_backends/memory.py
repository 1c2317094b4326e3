"""The in-memory session store.

It lives in :mod:`runner_core.memory_sessions` because ``Runner`` uses it as its default store
and ``runner_core`` imports nothing from this package; this module is its place among the
backends.
"""

from runner_core.memory_sessions import InMemorySessionService

__all__ = ["InMemorySessionService"]
