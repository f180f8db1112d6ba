"""The accounts app's tasks: avatar thumbnails, on the `thumbnails` queue; the nightly sessions sweep."""

import logging
from importlib import import_module

from django.conf import settings
from django.core.files.storage import default_storage
from django.tasks import task

from tasks.schedules import schedule

from .avatars import broadcast_avatar, swap_in, thumbnail_name, write_exactly

logger = logging.getLogger(__name__)


@task(queue_name="thumbnails", max_attempts=3, retry_backoff=2.0)
def make_thumbnails(user_id: int, original: str) -> str | None:
    """Make the thumbnail set of `original` for `user_id`; returns its digest.

    Idempotent: a rerun writes the same names with the same bytes. Only once the
    whole set is written does the user's avatar_digest point at it; then older
    sets and originals are removed, and every room showing the user is told.
    Does nothing (returns None) if the user has uploaded another avatar since.
    """
    # Pillow, imported by the first thumbnail a process makes: a worker that serves
    # other queues never loads it.
    from .images import render_thumbnails

    storage = default_storage
    try:
        with storage.open(original, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:  # a newer avatar's task already swept it away
        logger.info("event=avatar_superseded user=%s original=%s", user_id, original)
        return None
    digest = original.rsplit("/", 1)[-1].split(".")[0]  # store_avatar named it by its SHA-256
    for output, content in render_thumbnails(data).items():
        write_exactly(storage, thumbnail_name(user_id, digest, output), content)
    if not swap_in(storage, user_id, digest, original):
        logger.info("event=avatar_superseded user=%s original=%s", user_id, original)
        return None
    logger.info("event=avatar_ready user=%s digest=%s", user_id, digest[:12])
    broadcast_avatar(user_id)
    return digest


@schedule(cron="15 3 * * *")
@task(queue_name="default")
def clear_expired_sessions() -> None:
    """Nightly: delete expired login sessions, which Django never deletes by itself (its `clearsessions`)."""
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
