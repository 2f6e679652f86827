# Agent Service: worker, beat and Flower under supervisord. Configure with environment variables
# (see .env.example); the schema is migrated at start by the `migrate` program.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 agent && chown -R agent /app
USER agent

EXPOSE 5555 9808
CMD ["supervisord", "-c", "/app/supervisord.conf"]
