"""`make bench`: the baseline design, the service's production worker and a bare-Celery floor, measured
side by side on real Redis, PostgreSQL and the bundled LLM server. Entry point: `bench/run.py`."""
