"""What a worker adds to Celery's consumer: the batches task base its agent tasks run on (`batching`), the gate
that holds agent tasks until the database answers (`readiness`) and the fair-share dispatch loop (`dispatch`)."""
