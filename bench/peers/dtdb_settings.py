"""Django settings for django-tasks-db: its database backend on the benchmark's PostgreSQL.

The worker is `django-admin db_worker` with these settings. Connections are
kept (CONN_MAX_AGE) as Parley keeps them, so neither pays a reconnect per task.
"""

import os
from urllib.parse import urlsplit

_db = urlsplit(os.environ["BENCH_DATABASE_URL"])

SECRET_KEY = "bench-only"
DEBUG = False  # DEBUG would keep every query in memory and reload workers on code changes
USE_TZ = True
INSTALLED_APPS = ["django_tasks_db"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": _db.username or "postgres",
        "HOST": _db.hostname,
        "PORT": _db.port,
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
