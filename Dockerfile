# Agent Service: worker, beat and Flower under supervisord. Configure with environment variables
# (see .env.example); the schema is migrated at start by the `migrate` program.
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
ENV FLOWER_ADDRESS=0.0.0.0 METRICS_ADDRESS=0.0.0.0
EXPOSE 5555 9808
# `docker stop` sends SIGTERM to supervisord, which stops the worker gracefully (supervisord.conf); give it
# stopwaitsecs (90 s) rather than Docker's default 10 s: `docker stop -t 100`, or `stop_grace_period: 100s`.
CMD ["supervisord", "-c", "/app/supervisord.conf"]
