import os

from django.conf import settings


def test_stack_matches_option():
    stack = os.environ["PARLEY_TEST_STACK"]
    engine = settings.DATABASES["default"]["ENGINE"]
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if stack == "postgres":
        assert engine == "django.db.backends.postgresql"
        assert layer == "channels_redis.core.RedisChannelLayer"
    else:
        assert engine == "django.db.backends.sqlite3"
        assert layer == "channels.layers.InMemoryChannelLayer"
