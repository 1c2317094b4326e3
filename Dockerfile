# The agent-runner image used by docker-compose.yml (run workers, summary workers, Flower, the
# HTTP gateway).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY runner_core ./runner_core
COPY session_backends ./session_backends
COPY workers ./workers
COPY gateway ./gateway
# otel: workers export traces and metrics when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/telemetry.md).
RUN pip install --no-cache-dir '.[gateway,otel]' \
    && useradd --system --uid 10001 --home-dir /app agent
# Build-time check: the worker app, the Redis transport and Flower import from the installed
# package alone (tests/test_install.py runs this same line in a bare virtual environment).
RUN cd / && python -c "import workers.app, workers.tasks, kombu.transport.redis, flower.command; print('agent-runner image: imports ok')"
RUN cd / && python -c "import gateway.app, uvicorn; print('agent-runner image: gateway ok')"
USER agent
CMD ["celery", "-A", "workers.app", "worker", "-Q", "runs", "-P", "threads", "-c", "100"]
