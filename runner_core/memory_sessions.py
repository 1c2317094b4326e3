from session_backends.memory import InMemorySessionService  # TEMP shim

__all__ = ["InMemorySessionService"]
