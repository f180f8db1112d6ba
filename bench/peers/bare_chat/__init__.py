"""The bare Channels-tutorial chat: the baseline bench/fanout.py measures Parley against.

group_send on channels-redis, no database, no validation, no auth: the least
work a Channels chat can do per message. Served by daphne:

    DJANGO_SETTINGS_MODULE=bench.peers.bare_chat.settings REDIS_URL=redis://... \
        daphne bench.peers.bare_chat.asgi:application
"""
