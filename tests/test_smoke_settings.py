import os

from django.conf import settings


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
