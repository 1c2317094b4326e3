# The agent-runner image used by docker-compose.yml (run workers, summary workers, Flower).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY runner_core ./runner_core
COPY session_backends ./session_backends
COPY workers ./workers
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app agent
# Build-time check: the worker app, the Redis transport and Flower import from the installed
# package alone (tests/test_install.py runs this same line in a bare virtual environment).
RUN cd / && python -c "import workers.app, workers.tasks, kombu.transport.redis, flower.command; print('agent-runner image: imports ok')"
USER agent
CMD ["celery", "-A", "workers.app", "worker", "-Q", "runs", "-P", "threads", "-c", "100"]
