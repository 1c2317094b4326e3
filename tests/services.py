"""Real redis-server and PostgreSQL fixtures (see module docstring once written)."""
