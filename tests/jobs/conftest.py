"""Fixtures of tests/jobs: a real Redis server and Celery test environments (celery_harness.py)."""

from celery_harness import celery_env, redis_server

__all__ = ["celery_env", "redis_server"]
