"""What a new user hits, part 2 (issue 18, items 5, 10, 13): each test here failed before its fix.

Tasks run through the real runner on the notifications queue; email and SMS go to
the local fakes of tests/fake_providers.py.
"""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from chat.models import Room
from notifications.models import Delivery, Notification
from notifications.tasks import process_invite
from tests.avatar_images import camera_jpeg
from tests.fake_providers import fake_postmark, fake_twilio, providers  # noqa: F401 (fixtures)
from tests.test_avatars import run_queued_task, upload
from tests.test_notifications import BOB_PHONE, by_email, by_sms, run_notifications

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ann():
    return get_user_model().objects.create_user("ann")  # no password: hashing one costs a second


@pytest.fixture
def bob():
    return get_user_model().objects.create_user("bob")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def private_room_with_invite(ann, bob) -> Room:
    """ann makes a private room and invites bob, through the pages a user clicks."""
    client = logged_in(ann)
    response = client.post("/new/", {"is_private": "on"})
    room = Room.objects.get(label=response["Location"].strip("/"))
    assert room.is_private
    assert client.post(f"/{room.label}/invite/", {"handle": "bob"}).status_code == 302
    return room


def test_an_invited_user_gets_an_in_app_notification_leading_to_the_room(providers, ann, bob):
    """Item 10: an invitation lands on the bell (nothing outside Parley for an in-app-only user)."""
    twilio, postmark = providers
    room = private_room_with_invite(ann, bob)
    run_notifications()
    notification = Notification.objects.get()  # bob's; ann, made a member as the creator, gets none
    assert (notification.user, notification.kind, notification.room, notification.is_read) == (bob, "invite", room, False)
    assert not Delivery.objects.exists()
    assert twilio.requests == [] and postmark.requests == []

    client = logged_in(bob)
    listing = client.get("/notifications/").content.decode()
    assert f"You were invited to the private room <strong>#{room.label}</strong>" in listing
    response = client.get(f"/notifications/{notification.pk}/")
    assert response.status_code == 302 and response["Location"] == f"/{room.label}/"
    notification.refresh_from_db()
    assert notification.is_read

    # Inviting again, or the task running again, tells nobody twice.
    assert logged_in(ann).post(f"/{room.label}/invite/", {"handle": "bob"}).status_code == 302
    run_notifications()
    process_invite.call(room.memberships.get(user=bob).pk)
    assert Notification.objects.count() == 1


def test_an_inactive_user_is_not_told_of_an_invitation(providers, ann, bob):
    """The invite form refuses them; a membership made elsewhere (the admin) tells them nothing either."""
    by_email(bob)
    bob.is_active = False
    bob.save()
    room = Room.objects.create(label="secret", is_private=True, created_by=ann)
    room.invite(bob, invited_by=ann)
    run_notifications()
    assert not Notification.objects.exists() and not Delivery.objects.exists()


def test_an_invited_user_who_chose_email_gets_an_email(providers, ann, bob):
    twilio, postmark = providers
    by_email(bob)
    room = private_room_with_invite(ann, bob)
    run_notifications()
    [email] = postmark.sent_to("bob@example.com")
    assert email["Subject"] == f"@ann invited you to #{room.label}"
    assert f"https://parley.test/{room.label}/" in email["TextBody"]
    assert f'<a href="https://parley.test/{room.label}/">' in email["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in email["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    delivery = Delivery.objects.get()
    assert (delivery.kind, delivery.channel, delivery.status) == ("invite", "email", "sent")
    assert Notification.objects.get(user=bob).delivery == delivery
    assert twilio.requests == []


def test_an_invited_user_who_chose_sms_gets_one_short_sms(providers, ann, bob):
    twilio, postmark = providers
    by_sms(bob)
    room = private_room_with_invite(ann, bob)
    run_notifications()
    [sms] = twilio.sent_to(BOB_PHONE)
    assert sms["body"] == f"Parley: @ann invited you to the private room #{room.label} https://parley.test/{room.label}/"
    assert len(sms["body"]) < 160
    assert Delivery.objects.get().status == "sent"
    assert postmark.requests == []


def test_me_avatar_says_whether_the_new_thumbnails_are_ready(ann):
    """Item 5: what /me/ asks while it says "being prepared"."""
    client = logged_in(ann)
    placeholder = dict.fromkeys(["256", "64", "32", "32png"], "/avatars/ann.svg")
    assert client.get("/me/avatar/").json() == {"pending": False, "avatar": placeholder}
    upload(client, camera_jpeg(1, 400, 300))
    assert 'data-status-url="/me/avatar/"' in client.get("/me/").content.decode()
    answer = client.get("/me/avatar/")
    assert answer.json()["pending"] is True and "no-cache" in answer["Cache-Control"]
    digest = run_queued_task(ann)
    status = client.get("/me/avatar/").json()
    assert status["pending"] is False
    assert status["avatar"]["256"] == f"/media/avatars/{ann.pk}/{digest}-256.webp"
    assert Client().get("/me/avatar/").status_code == 302  # to the login page
