"""Executes one action against a provider; knows nothing of Celery, leases or SQL."""
