import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from tests.processes import ROOT, base_env


def test_stack_matches_option():
    stack = os.environ["PARLEY_TEST_STACK"]
    engine = settings.DATABASES["default"]["ENGINE"]
    layers = {alias: layer["BACKEND"] for alias, layer in settings.CHANNEL_LAYERS.items()}
    if stack == "postgres":
        assert engine == "django.db.backends.postgresql"
        assert layers == {
            "default": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "tasks": "channels_redis.core.RedisChannelLayer",
        }
    else:
        assert engine == "django.db.backends.sqlite3"
        assert layers == {"default": "channels.layers.InMemoryChannelLayer", "tasks": "channels.layers.InMemoryChannelLayer"}


@pytest.mark.skipif(os.environ["PARLEY_TEST_STACK"] != "postgres", reason="prepared statements are PostgreSQL's")
@pytest.mark.django_db
def test_postgresql_prepares_a_statement_once_it_repeats():
    with connection.cursor() as cursor:
        for n in range(6):
            cursor.execute("SELECT %s::int + 1", [n])
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'SELECT $1::int + 1%%'")
        assert cursor.fetchone()[0] == 1


def test_prepared_statements_can_be_turned_off_for_a_pooler():
    code = "from django.conf import settings; print(sorted(settings.DATABASES['default'].get('OPTIONS', {})))"
    for value, expected in (("1", "['prepare_threshold', 'server_side_binding']"), ("0", "[]")):
        env = base_env(DATABASE_URL="postgres://parley@127.0.0.1:1/parley", DB_PREPARED_STATEMENTS=value)
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected
