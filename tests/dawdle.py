"""Slow parts for tests/e2e_settings.py: a disk that is slow to take thumbnails, a pause before sending.

Both only wait, with a greppable log line, and change nothing Parley sees.
"""

import logging
import time

from django.apps import AppConfig
from django.core.files.storage import FileSystemStorage
from django.db import transaction
from django.db.models.signals import post_save

logger = logging.getLogger(__name__)

# Long enough for any test to see the pause and kill the worker; it is never waited out.
PAUSE_BEFORE_SEND = 120.0


class SlowFileSystemStorage(FileSystemStorage):
    """The local disk, waiting `delay` seconds after each thumbnail file it writes."""

    def __init__(self, *, delay: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def _save(self, name: str, content) -> str:
        name = super()._save(name, content)
        if name.startswith("avatars/"):
            logger.warning("event=e2e_slow_write name=%s seconds=%s", name, self.delay)
            time.sleep(self.delay)
        return name


def pause_once_sending(sender, instance, created: bool, **kwargs) -> None:
    """A delivery saved as SENDING (notifications.delivery.compose): wait once that is committed.

    That is the moment between composing and marking the attempt in flight, so a
    worker killed here has sent nothing and left no trace of a provider call.
    """
    if instance.status == instance.Status.SENDING and instance.in_flight_since is None:
        transaction.on_commit(lambda: pause(instance.pk))


def pause(delivery_id: int) -> None:
    logger.warning("event=e2e_pause_before_send delivery=%s seconds=%s", delivery_id, PAUSE_BEFORE_SEND)
    time.sleep(PAUSE_BEFORE_SEND)


class DawdleConfig(AppConfig):
    name = "tests.dawdle"
    label = "e2e_dawdle"

    def ready(self) -> None:
        post_save.connect(pause_once_sending, sender="notifications.Delivery", dispatch_uid="e2e.pause_before_send")
