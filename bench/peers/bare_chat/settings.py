"""Minimal settings: just enough Django for channels to find its layer."""

import os

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES = {}
USE_TZ = True
# BARE_CHANNEL_LAYER picks the channels-redis layer, so the bench can compare
# the default (list + BZPOPMIN per channel) with the pub/sub one.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": os.environ.get("BARE_CHANNEL_LAYER", "channels_redis.core.RedisChannelLayer"),
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
    }
}
