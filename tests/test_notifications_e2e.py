"""Delivery survives a worker killed with SIGKILL: real runworker processes, fake Postmark and Twilio.

A mention is posted by a `manage.py shell` process; a real `runworker
notifications` parses it and sends. The worker is killed at the worst moments,
a second worker takes the task over (after the lease of the dead one runs
out), and the provider must have the message exactly once.
"""

import signal

import pytest

from tests.fake_providers import fake_postmark, fake_twilio, provider_env  # noqa: F401 (fixtures)
from tests.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PHONE = "+14155550101"
SETUP = """
from django.contrib.auth import get_user_model
from chat.models import Room
User = get_user_model()
ann = User.objects.create_user("ann")
User.objects.create_user("bob", mention_channel="{channel}", email="bob@example.com", email_confirmed=True,
                         phone="{phone}", phone_confirmed=True)
Room.objects.create(label="general").post(ann, "@bob are you there?", "c1")
"""
STATUS = "from notifications.models import Delivery; d = Delivery.objects.get(); print(d.status, d.provider_id)"


def delivery(stack) -> list[str]:
    out = stack.manage("shell", "--no-imports", "-c", STATUS).stdout.split()
    return out + [""] * (2 - len(out))


def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_worker_killed_after_twilio_accepted_does_not_send_a_second_sms(stack, fake_twilio, fake_postmark):
    stack.env.update(provider_env(fake_twilio, fake_postmark), TWILIO_TIMEOUT="60")
    # Twilio takes the message and never answers: the worker waits for the answer until killed.
    fake_twilio.script(("accept_then_hang", 120))
    first = stack.runworker("notifications")
    stack.manage("shell", "--no-imports", "-c", SETUP.format(channel="sms", phone=PHONE))
    wait_until(lambda: fake_twilio.sent_to(PHONE), timeout=60, interval=0.1, message="SMS accepted")
    assert delivery(stack)[0] == "sending"
    kill(first)

    stack.runworker("notifications")
    status, sid = wait_until(lambda: (d := delivery(stack))[0] == "sent" and d, timeout=90, interval=1,
                             message="delivery recorded")  # fmt: skip
    [sms] = fake_twilio.sent_to(PHONE)
    assert sid == sms["sid"]  # the one Twilio had, found by the lookup
    assert len(fake_twilio.requests) == 1, "a second SMS was sent"
    assert fake_twilio.list_queries and fake_twilio.list_queries[0]["to"] == PHONE


def test_worker_killed_before_sending_still_sends_once(stack, fake_twilio, fake_postmark):
    stack.env.update(provider_env(fake_twilio, fake_postmark))
    # The first worker (tests.e2e_settings) stops once the delivery is SENDING, right before the provider call.
    first = stack.runworker("notifications", settings="tests.e2e_settings")
    stack.manage("shell", "--no-imports", "-c", SETUP.format(channel="email", phone=""))
    wait_until(lambda: "event=e2e_pause_before_send" in stack.logs(), timeout=60, interval=0.2, message="worker paused")
    assert delivery(stack)[0] == "sending"
    kill(first)
    assert fake_postmark.requests == []

    stack.runworker("notifications")
    status, message_id = wait_until(lambda: (d := delivery(stack))[0] == "sent" and d, timeout=90, interval=1,
                                    message="delivery recorded")  # fmt: skip
    [email] = fake_postmark.sent_to("bob@example.com")
    assert message_id == email["MessageID"]
    assert email["Subject"] == "@ann mentioned you in #general"
    assert len(fake_postmark.requests) == 1
