"""Parley's settings on channels-redis's pub/sub layer, for bench/fanout.py to compare layers."""

from project.settings import *  # noqa: F403

CHANNEL_LAYERS["default"] = {  # noqa: F405
    "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "CONFIG": {"hosts": [REDIS_URL]},  # noqa: F405
}
