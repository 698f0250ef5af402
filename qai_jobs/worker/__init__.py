"""What runs in a worker: Celery tasks, the drain loop, sweeps and webhook delivery."""
