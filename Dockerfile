# Agent Service: one process per container, chosen by the command (the CLI's own commands):
#   worker (the default) | beat (exactly one per deployment) | flower | migrate (once, before the workers)
# docker-compose.yml runs them all; configure with environment variables (see .env.example) and, for secrets,
# files under /run/secrets named for their setting (/run/secrets/database_url): Docker or Compose secrets.
# Hosts without containers run the same processes under supervisord (supervisord.conf).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# The package itself, for the `agent-service` console script; its dependencies came from requirements.txt above.
RUN pip install --no-deps .
RUN useradd --create-home --uid 10001 agent && chown -R agent /app
USER agent

# Inside a container only the published ports are reachable, and loopback is not: listen on every
# interface. Flower then refuses to start without FLOWER_BASIC_AUTH=user:password.
ENV FLOWER_ADDRESS=0.0.0.0 API_ADDRESS=0.0.0.0 METRICS_ADDRESS=0.0.0.0 METRICS_PORT=9808
EXPOSE 5555 8000 9808

# SIGTERM is Celery's warm shutdown: the worker takes no more messages, hands back those it holds, and lets the
# batches under way finish, their LLM calls answered (each within LLM_TIMEOUT_SECONDS, 60 s by default). Give it
# longer than that before the kill: `docker stop -t 100`, or `stop_grace_period: 100s` (docker-compose.yml).
STOPSIGNAL SIGTERM

# Unhealthy when this container's worker does not answer on the broker or does not consume its queues (it holds
# the agent queue back while its database does not answer). The probe is light: about 0.3 s of CPU. Other
# commands name their own probe (docker-compose.yml): `python -m agent_service.health beat|flower`.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "-m", "agent_service.health", "worker"]

ENTRYPOINT ["agent-service"]
CMD ["worker"]
