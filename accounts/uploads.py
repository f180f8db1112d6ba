"""An avatar coming in: the upload kept as the user's original, its thumbnails queued.

What the profile form and the room socket's `avatar.refresh` call; the checks
before this are accounts.images.validate_upload, the work after it is
accounts.tasks.make_thumbnails.
"""

import logging
from typing import IO

from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.db import transaction
from django.tasks import TaskResult

from .avatars import content_digest, original_name, write_exactly
from .tasks import make_thumbnails

logger = logging.getLogger(__name__)


def request_thumbnails(user) -> TaskResult | None:
    """Queue thumbnails for the user's current avatar; None if they have none.

    The one way in for the upload view and the WebSocket `avatar.refresh`
    command. Reads the avatar from the database, not from `user`, which may be
    a stale copy (a socket's user was loaded when it connected).
    """
    original = get_user_model().objects.filter(pk=user.pk).values_list("avatar", flat=True).first()
    if not original:
        return None
    result = make_thumbnails.enqueue(user.pk, original)
    logger.info("event=avatar_queued user=%s task=%s", user.pk, result.id)
    return result


def store_avatar(user, upload: IO[bytes], image_format: str) -> TaskResult:
    """Keep a validated upload as the user's avatar and queue its thumbnails.

    The user's row is locked while the original is written, so a thumbnail task
    finishing meanwhile cannot sweep the new original away as "old". If the
    database write fails, the file written for it is removed again.
    """
    upload.seek(0)
    data = upload.read()
    name = original_name(user.pk, content_digest(data), image_format)
    User = get_user_model()
    existed = default_storage.exists(name)  # the same picture again: nothing new to clean up
    try:
        with transaction.atomic():
            User.objects.lock(user.pk)
            write_exactly(default_storage, name, data)
            User.objects.filter(pk=user.pk).update(avatar=name)
            user.avatar.name = name
            result = request_thumbnails(user)
    except BaseException:
        if not existed and default_storage.exists(name):
            default_storage.delete(name)
        raise
    logger.info("event=avatar_uploaded user=%s original=%s bytes=%d", user.pk, name, len(data))
    return result
