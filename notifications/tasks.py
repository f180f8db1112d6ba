"""The notifications queue: what the chat and the test view dispatch, and the sending itself."""

from django.tasks import task

from tasks.exceptions import RetryLater
from tasks.progress import ProgressContext

from . import delivery, notify
from .providers import TransientFailure


@task(queue_name="notifications", max_attempts=3, retry_backoff=2.0)
def process_mentions(message_id: int) -> int:
    """Enqueued when a chat message is saved (signals.py)."""
    return notify.notify_mentions(message_id)


@task(queue_name="notifications", max_attempts=3, retry_backoff=2.0)
def process_invite(membership_id: int) -> int | None:
    """Enqueued when someone else makes a user a member of a private room (signals.py)."""
    notification = notify.notify_invite(membership_id)
    return notification.pk if notification else None


@task(queue_name="notifications", max_attempts=3, retry_backoff=2.0)
def send_test_notification(user_id: int) -> int | None:
    """Enqueued by POST /notifications/test/."""
    test = notify.send_test(user_id)
    return test.pk if test else None


# 6 attempts over about 2.5 minutes (5 s, 10 s, 20 s, 40 s, 80 s): a provider
# outage longer than that is recorded as a failure the user can see.
@task(queue_name="notifications", takes_context=True, max_attempts=6, retry_backoff=5.0)
def send_delivery(context: ProgressContext, delivery_id: int) -> str:
    # Attempts lost with their worker do not count against max_attempts: the context knows.
    try:
        return delivery.attempt(delivery_id, context.is_last_attempt)
    except TransientFailure as exc:
        if exc.retry_after is not None:
            raise RetryLater(exc.retry_after, str(exc)) from exc
        raise
