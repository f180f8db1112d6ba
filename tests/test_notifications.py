"""@mentions: who is notified, where, when, and how deliveries survive provider errors.

Tasks run through the real runner (tests/run_tasks.py) on the notifications
queue; email goes through anymail's Postmark backend and SMS through the twilio
client, both to the local fakes of tests/fake_providers.py.
"""

import itertools
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.utils import timezone

from chat.models import Membership, Presence, Room, ServerProcess
from notifications.mentions import parse_mentions
from notifications.models import Delivery, Notification
from tasks.models import TaskRecord
from tests.fake_providers import fake_postmark, fake_twilio, providers  # noqa: F401 (fixtures)
from tests.run_tasks import run_queue

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = "test-host:1:notify"
BOB_PHONE = "+14155550101"
client_ids = (f"c{n}" for n in itertools.count())


# --- helpers ----------------------------------------------------------------------


def run_notifications(limit: int = 30) -> int:
    """Run due tasks of the notifications queue, as a worker would, until none is left; how many ran."""
    return run_queue(["notifications"], limit, WORKER)


def fast_forward() -> list[TaskRecord]:
    """Make every waiting task due now (as if its delay had passed); the ones moved."""
    waiting = list(TaskRecord.objects.filter(status="READY", available_at__gt=timezone.now()))
    TaskRecord.objects.filter(pk__in=[r.pk for r in waiting]).update(available_at=timezone.now())
    return waiting


def post(room: Room, user, text: str):
    message, created = room.post(user, text, next(client_ids))
    assert created
    return message


def be_present(room: Room, user, seconds_ago: float = 0) -> None:
    """A socket of `user` in `room`, on a process last seen `seconds_ago`."""
    process = ServerProcess.objects.create(last_seen=timezone.now() - timedelta(seconds=seconds_ago))
    Presence.objects.create(channel_name=f"test.{user.pk}.{room.pk}.{seconds_ago}", room=room, user=user, process=process)


def render_settings(user) -> str:
    request = RequestFactory().get("/me/")
    request.user = user
    return Template("{% load notifications %}{% notification_settings %}").render(Context({"request": request}))


@pytest.fixture
def ann():
    return get_user_model().objects.create_user("ann")  # no password: hashing one costs a second


@pytest.fixture
def bob():
    return get_user_model().objects.create_user("Bob")


@pytest.fixture
def room(ann):
    return Room.objects.create(label="general", created_by=ann)


def by_email(user, email: str = "bob@example.com"):
    user.mention_channel, user.email, user.email_confirmed = "email", email, True
    user.save()
    return user


def by_sms(user, phone: str = BOB_PHONE):
    user.mention_channel, user.phone, user.phone_confirmed = "sms", phone, True
    user.save()
    return user


# --- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, handles, here",
    [
        ("hi @Bob and @ann!", ["bob", "ann"], False),
        ("@BOB @bob @Bob", ["bob"], False),
        ("write to bob@example.com", [], False),
        ("see https://example.com/@bob and www.example.org/@ann", [], False),
        ("@bob@mastodon.social is not bob here", [], False),
        ("(@bob), @ann.", ["bob", "ann"], False),
        ("@here look", [], True),
        ("@" + "x" * 31, [], False),
    ],
)
def test_parse_mentions(text, handles, here):
    assert parse_mentions(text) == (handles, here)


# --- who is notified, and where ----------------------------------------------------


def test_in_app_only_gets_a_notification_and_nothing_outside(providers, room, ann, bob):
    twilio, postmark = providers
    message = post(room, ann, "hello @BOB")
    assert TaskRecord.objects.filter(queue_name="notifications").count() == 1  # dispatched on save
    run_notifications()
    notification = Notification.objects.get(user=bob)
    assert (notification.message, notification.room, notification.is_read) == (message, room, False)
    assert not Delivery.objects.exists()
    assert twilio.requests == [] and postmark.requests == []


def test_email_preference_sends_an_email_with_one_click_unsubscribe(providers, room, ann, bob):
    twilio, postmark = providers
    by_email(bob)
    message = post(room, ann, "lunch, @bob? <b>now</b>")
    run_notifications()
    [email] = postmark.sent_to("bob@example.com")
    assert email["Subject"] == "@ann mentioned you in #general"
    assert f"https://parley.test/general/#message-{message.pk}" in email["TextBody"]
    assert "&lt;b&gt;now&lt;/b&gt;" in email["HtmlBody"] and "<b>now" not in email["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in email["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<https://parley\.test/notifications/unsubscribe/[^/]+/>", headers["List-Unsubscribe"])
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.channel, delivery.provider_id, delivery.attempts) == (
        "sent", "email", email["MessageID"], 1)
    assert twilio.requests == []


def test_sms_preference_sends_one_short_sms_with_a_link(providers, room, ann, bob):
    twilio, postmark = providers
    by_sms(bob)
    message = post(room, ann, "@bob " + "very long text " * 40)
    run_notifications()
    [sms] = twilio.sent_to(BOB_PHONE)
    assert sms["from"] == twilio.from_number
    assert len(sms["body"]) < 160
    assert sms["body"].startswith('Parley: @ann in #general: "@bob very long')
    assert sms["body"].endswith(f" https://parley.test/general/#message-{message.pk}")
    assert Delivery.objects.get().provider_id == sms["sid"]
    assert postmark.requests == []


def test_nothing_goes_to_unconfirmed_or_opted_out_addresses(providers, room, ann, bob):
    twilio, postmark = providers
    carol = by_email(get_user_model().objects.create_user("carol"), "carol@example.com")
    carol.email_opted_out = True
    carol.save()
    by_sms(bob)
    bob.phone_confirmed = False
    bob.save()
    post(room, ann, "@bob @carol")
    run_notifications()
    assert Notification.objects.filter(user__in=[bob, carol]).count() == 2  # still told in Parley
    assert not Delivery.objects.exists()
    assert twilio.requests == [] and postmark.requests == []


def test_never_for_ones_own_message_nor_a_room_one_cannot_see(providers, ann, bob):
    twilio, postmark = providers
    by_sms(bob)
    by_email(ann, "ann@example.com")
    secret = Room.objects.create(label="secret", is_private=True, created_by=ann)
    Membership.objects.create(room=secret, user=ann)
    post(secret, ann, "@ann @bob private")
    run_notifications()
    assert not Notification.objects.exists()
    Membership.objects.create(room=secret, user=bob)
    post(secret, ann, "@bob now you can")
    run_notifications()
    assert list(Notification.objects.values_list("user__username", flat=True)) == ["Bob"]
    assert len(twilio.sent_to(BOB_PHONE)) == 1 and postmark.requests == []


def test_no_email_or_sms_while_the_user_is_in_the_room(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    be_present(room, bob)
    post(room, ann, "@bob you are here")
    run_notifications()
    assert Notification.objects.filter(user=bob).count() == 1
    assert not Delivery.objects.exists() and twilio.requests == []
    # A presence row nobody refreshed is a dead socket: it does not count.
    Presence.objects.all().delete()
    be_present(room, bob, seconds_ago=3600)
    post(room, ann, "@bob are you there?")
    run_notifications()
    assert len(twilio.sent_to(BOB_PHONE)) == 1


def test_at_here_notifies_everyone_present_in_the_room_only(providers, room, ann, bob):
    dave = get_user_model().objects.create_user("dave")
    be_present(room, bob)
    be_present(room, ann)
    post(room, ann, "@here meeting")
    run_notifications()
    assert list(Notification.objects.values_list("user__username", flat=True)) == ["Bob"]
    assert not Notification.objects.filter(user=dave).exists()


def test_mentions_in_a_five_minute_window_are_gathered_into_the_next_message(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    post(room, ann, "@bob one")
    run_notifications()
    assert len(twilio.sent_to(BOB_PHONE)) == 1
    first = Delivery.objects.get()
    post(room, ann, "@bob two")
    post(room, ann, "@bob three")
    post(room, ann, "@bob four")
    run_notifications()
    assert len(twilio.sent_to(BOB_PHONE)) == 1  # nothing more inside the window
    second = Delivery.objects.exclude(pk=first.pk).get()
    assert second.status == "queued" and second.notifications.count() == 3
    assert second.send_after == first.started_at + timedelta(minutes=5)
    [waiting] = fast_forward()
    assert abs(waiting.available_at - second.send_after) < timedelta(seconds=1)
    run_notifications()
    sms = twilio.sent_to(BOB_PHONE)
    assert len(sms) == 2
    assert sms[1]["body"] == "Parley: 3 new mentions in #general https://parley.test/general/"
    # Another room has its own window.
    other = Room.objects.create(label="random")
    post(other, ann, "@bob elsewhere")
    run_notifications()
    assert len(twilio.sent_to(BOB_PHONE)) == 3


def test_a_gathered_delivery_is_skipped_if_everything_was_read_meanwhile(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    post(room, ann, "@bob one")
    run_notifications()
    post(room, ann, "@bob two")
    run_notifications()
    Notification.objects.filter(user=bob).update(read_at=timezone.now())
    fast_forward()
    run_notifications()
    assert len(twilio.sent_to(BOB_PHONE)) == 1
    assert Delivery.objects.order_by("id").last().status == "skipped"


# --- provider errors -----------------------------------------------------------------


def test_sms_500_and_429_are_retried_honouring_retry_after(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    twilio.script(("error", 500, 20500), ("error", 429, 20429, 42))
    post(room, ann, "@bob hi")
    run_notifications()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, twilio.sent_to(BOB_PHONE)) == ("sending", 1, [])
    [retry] = fast_forward()  # the 500's backoff
    run_notifications()
    [retry] = TaskRecord.objects.filter(status="READY")
    wait = (retry.available_at - timezone.now()).total_seconds()
    assert 39 < wait <= 42  # Retry-After, not the backoff
    fast_forward()
    run_notifications()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    assert len(twilio.sent_to(BOB_PHONE)) == 1


def test_invalid_number_is_a_permanent_failure_shown_to_the_user(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob, "+14155550199")
    twilio.script(("error", 400, 21211))
    post(room, ann, "@bob hi")
    run_notifications()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.error_code, delivery.attempts) == ("failed", "21211", 1)
    assert not TaskRecord.objects.filter(status="READY").exists()  # no retry
    assert len(twilio.requests) == 1
    page = render_settings(bob)
    assert "did not reach you" in page and "invalid phone number" in page and "+14155550199" in page


def test_bounced_address_is_a_permanent_failure_and_email_500_is_retried(providers, room, ann, bob):
    _, postmark = providers
    by_email(bob)
    postmark.script(("error", 500), ("error", 429, 0, 30), ("error", 422, 406))
    post(room, ann, "@bob hi")
    run_notifications()
    fast_forward()
    run_notifications()
    [retry] = TaskRecord.objects.filter(status="READY")
    assert 27 < (retry.available_at - timezone.now()).total_seconds() <= 30  # Retry-After
    fast_forward()
    run_notifications()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, len(postmark.requests)) == ("failed", 3, 3)
    assert "refused" in delivery.error
    assert "did not reach you" in render_settings(bob)


@pytest.mark.parametrize("still_queued", [False, True], ids=["sent", "still-queued-at-twilio"])
def test_sms_timeout_after_twilio_accepted_is_found_not_resent(providers, room, ann, bob, still_queued):
    twilio, _ = providers
    by_sms(bob)
    twilio.queue_messages = still_queued  # queued: no date_sent yet, so DateSent> would miss it
    twilio.script(("accept_then_hang", 3))  # the client gives up after 1 s
    post(room, ann, "@bob hi")
    run_notifications()
    delivery = Delivery.objects.get()
    assert delivery.status == "sending" and delivery.in_flight_since is not None
    fast_forward()
    run_notifications()
    delivery.refresh_from_db()
    [sms] = twilio.sent_to(BOB_PHONE)
    assert (delivery.status, delivery.provider_id) == ("sent", sms["sid"])
    assert twilio.list_queries and twilio.list_queries[0]["to"] == BOB_PHONE
    assert len(twilio.requests) == 1  # looked up, not sent again


def test_a_failed_lookup_is_retried_never_guessed(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    twilio.script(("accept_then_hang", 3))
    twilio.list_failures = 1
    post(room, ann, "@bob hi")
    run_notifications()
    fast_forward()
    run_notifications()  # the lookup answers 500: neither sent again nor given up
    delivery = Delivery.objects.get()
    assert (delivery.status, len(twilio.requests)) == ("sending", 1) and delivery.in_flight_since is not None
    fast_forward()
    run_notifications()
    delivery.refresh_from_db()
    [sms] = twilio.sent_to(BOB_PHONE)
    assert (delivery.status, delivery.provider_id, len(twilio.requests)) == ("sent", sms["sid"], 1)


def test_sms_timeout_before_twilio_took_it_is_sent_once_on_retry(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    twilio.script(("hang", 3))
    post(room, ann, "@bob hi")
    run_notifications()
    fast_forward()
    run_notifications()
    delivery = Delivery.objects.get()
    [sms] = twilio.sent_to(BOB_PHONE)
    assert (delivery.status, delivery.provider_id, len(twilio.list_queries)) == ("sent", sms["sid"], 1)


def test_email_timeout_is_recorded_uncertain_not_sent_twice(providers, room, ann, bob):
    _, postmark = providers
    by_email(bob)
    postmark.script(("accept_then_hang", 3))
    post(room, ann, "@bob hi")
    run_notifications()
    fast_forward()
    run_notifications()
    delivery = Delivery.objects.get()
    assert delivery.status == "uncertain" and "duplicate" in delivery.error
    assert len(postmark.sent_to("bob@example.com")) == 1 and len(postmark.requests) == 1
    assert "possibly sent" in render_settings(bob)


def test_a_provider_down_for_every_attempt_ends_failed(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    twilio.script(*[("error", 503, 20503)] * 6)
    post(room, ann, "@bob hi")
    run_notifications()
    for _ in range(5):
        fast_forward()
        run_notifications()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 6)
    assert delivery.error.startswith("gave up after 6 attempts")
    assert TaskRecord.objects.get(task_path="notifications.tasks.send_delivery").status == "SUCCESSFUL"


# --- the test notification, unsubscribe, confirmations, webhook ------------------------


def test_post_test_notification_goes_through_the_notifications_queue(providers, bob):
    twilio, _ = providers
    by_sms(bob)
    client = Client()
    client.force_login(bob)
    assert client.get("/notifications/test/").status_code == 405
    response = client.post("/notifications/test/", {"next": "/me/"})
    assert response.status_code == 302 and response["Location"] == "/me/"
    assert TaskRecord.objects.get().queue_name == "notifications"
    run_notifications()
    assert Notification.objects.get(user=bob).kind == "test"
    [sms] = twilio.sent_to(BOB_PHONE)
    assert "test notification" in sms["body"] and len(sms["body"]) < 160


def test_one_click_unsubscribe(providers, room, ann, bob):
    _, postmark = providers
    by_email(bob)
    post(room, ann, "@bob hi")
    run_notifications()
    [email] = postmark.sent_to("bob@example.com")
    link = {h["Name"]: h["Value"] for h in email["Headers"]}["List-Unsubscribe"].strip("<>")
    path = link.removeprefix("https://parley.test")
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.get(path).status_code == 200  # a link scanner's GET changes nothing
    bob.refresh_from_db()
    assert not bob.email_opted_out
    response = anonymous.post(path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    bob.refresh_from_db()
    assert bob.email_opted_out
    assert anonymous.post(path[:-5] + "xxxx/").status_code == 400
    Room.objects.create(label="other")
    post(Room.objects.get(label="other"), ann, "@bob again")
    run_notifications()
    assert len(postmark.sent_to("bob@example.com")) == 1
    assert "unsubscribed" in render_settings(bob)


def test_a_changed_email_is_used_only_once_confirmed(providers, room, ann, bob):
    _, postmark = providers
    by_email(bob, "old@example.com")
    client = Client()
    client.force_login(bob)
    client.post("/notifications/settings/", {"mention_channel": "email", "email": "new@example.com", "phone": ""})
    bob.refresh_from_db()
    assert (bob.email, bob.email_confirmed) == ("new@example.com", False)
    post(room, ann, "@bob before confirming")
    run_notifications()
    [confirmation] = postmark.requests and postmark.sent_to("new@example.com")
    assert confirmation["Subject"] == "Confirm your email for Parley"
    assert postmark.sent_to("old@example.com") == []
    path = re.search(r"https://parley\.test(/notifications/confirm-email/[^/]+/)", confirmation["TextBody"]).group(1)
    anonymous = Client()
    assert anonymous.get(path).status_code == 200
    bob.refresh_from_db()
    assert not bob.email_confirmed  # GET only asks
    assert anonymous.post(path).status_code == 200
    bob.refresh_from_db()
    assert bob.email_confirmed
    post(room, ann, "@bob after confirming")
    run_notifications()
    assert len(postmark.sent_to("new@example.com")) == 2
    # A link for an address since replaced confirms nothing.
    client.post("/notifications/settings/", {"mention_channel": "email", "email": "newer@example.com", "phone": ""})
    assert anonymous.post(path).status_code == 400
    bob.refresh_from_db()
    assert (bob.email, bob.email_confirmed) == ("newer@example.com", False)


def test_a_changed_phone_is_validated_and_confirmed_by_a_texted_code(providers, bob):
    twilio, _ = providers
    client = Client()
    client.force_login(bob)
    response = client.post("/notifications/settings/", {"mention_channel": "sms", "phone": "12345", "next": "/x/"},
                           follow=True)  # fmt: skip
    assert "12345 is not a valid phone number" in response.content.decode()
    response = client.post("/notifications/settings/", {"mention_channel": "sms", "phone": "not a number"},
                           follow=True)  # fmt: skip
    assert "does not look like a phone number" in response.content.decode()
    bob.refresh_from_db()
    assert bob.phone == ""
    client.post("/notifications/settings/", {"mention_channel": "sms", "phone": "(415) 555-0101", "email": ""})
    bob.refresh_from_db()
    # E.164; SMS is chosen only once the number is confirmed (issue 18).
    assert (bob.phone, bob.phone_confirmed, bob.mention_channel) == (BOB_PHONE, False, "app")
    run_notifications()
    [sms] = twilio.sent_to(BOB_PHONE)
    code = re.search(r"code: (\d{6})", sms["body"]).group(1)
    assert 'name="code"' in render_settings(bob)
    wrong = "000000" if code != "000000" else "111111"
    response = client.post("/notifications/confirm-phone/", {"code": wrong}, follow=True)
    assert "not right (4 tries left)" in response.content.decode()
    client.post("/notifications/confirm-phone/", {"code": code})
    bob.refresh_from_db()
    assert bob.phone_confirmed
    assert code not in Delivery.objects.get(kind="confirm").body  # not kept once sent


def twilio_post(client: Client, params: dict[str, str], token: str):
    from twilio.request_validator import RequestValidator

    url = "https://parley.test/notifications/twilio/"
    signature = RequestValidator(token).compute_signature(url, params)
    return client.post("/notifications/twilio/", params, HTTP_X_TWILIO_SIGNATURE=signature)


def test_twilio_webhook_needs_a_valid_signature_and_honours_stop(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    client = Client(enforce_csrf_checks=True)
    stop = {"MessageSid": "SMin", "SmsStatus": "received", "From": BOB_PHONE, "To": twilio.from_number,
            "Body": "STOP", "OptOutType": "STOP"}  # fmt: skip
    assert client.post("/notifications/twilio/", stop).status_code == 403
    assert twilio_post(client, stop, "not-the-token").status_code == 403
    bob.refresh_from_db()
    assert not bob.sms_opted_out
    assert twilio_post(client, stop, twilio.auth_token).status_code == 200
    bob.refresh_from_db()
    assert bob.sms_opted_out
    post(room, ann, "@bob hi")
    run_notifications()
    assert twilio.requests == []
    assert "replied STOP" in render_settings(bob)


def test_twilio_status_callback_records_undelivered_messages(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    post(room, ann, "@bob hi")
    run_notifications()
    delivery = Delivery.objects.get()
    report = {"MessageSid": delivery.provider_id, "MessageStatus": "undelivered", "ErrorCode": "30003",
              "SmsStatus": "undelivered", "To": BOB_PHONE, "From": twilio.from_number}  # fmt: skip
    assert twilio_post(Client(), report, twilio.auth_token).status_code == 200
    delivery.refresh_from_db()
    assert (delivery.status, delivery.provider_status, delivery.error_code) == ("failed", "undelivered", "30003")
    assert "not delivered by the carrier" in render_settings(bob)


def test_notification_list_and_reading(room, ann, bob):
    post(room, ann, "@bob first")
    post(room, ann, "@bob second")
    run_notifications()
    client = Client()
    client.force_login(bob)
    page = client.get("/notifications/").content.decode()
    assert "second" in page and "Mark all 2 read" in page
    first = Notification.objects.filter(user=bob).order_by("id").first()
    response = client.get(f"/notifications/{first.pk}/")
    assert response["Location"] == f"/general/#message-{first.message_id}"
    first.refresh_from_db()
    assert first.is_read
    client.post("/notifications/read/")
    assert not Notification.objects.filter(user=bob, read_at__isnull=True).exists()
    other = Client()
    other.force_login(ann)
    assert other.get(f"/notifications/{first.pk}/").status_code == 404


def test_profile_page_has_the_settings_section_and_errors_come_back_to_it(bob):
    client = Client()
    client.force_login(bob)
    page = client.get("/me/").content.decode()
    assert 'action="/notifications/settings/"' in page and 'name="mention_channel"' in page
    assert 'value="/me/"' in page and "Send me a test notification" in page
    response = client.post("/notifications/settings/", {"mention_channel": "sms", "phone": "+44 20", "next": "/me/"},
                           follow=True)  # fmt: skip
    assert response.redirect_chain == [("/me/", 302)]
    assert "+44 20 is not a valid phone number" in response.content.decode()
    bad_next = {"mention_channel": "email", "email": "", "next": "//evil.example/"}
    response = client.post("/notifications/settings/", bad_next)
    assert response["Location"] == "/notifications/"  # never a redirect off-site
    assert client.get("/").status_code == 200 and 'class="bell"' in client.get("/").content.decode()


def test_a_bounce_reported_by_the_esp_webhook_is_shown_and_a_complaint_opts_out(providers, settings, room, ann, bob):
    _, postmark = providers
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": "hook:secret-words"}
    by_email(bob)
    post(room, ann, "@bob hi")
    run_notifications()
    [email] = postmark.sent_to("bob@example.com")
    bounce = {"RecordType": "Bounce", "Type": "HardBounce", "ID": 42, "MessageID": email["MessageID"],
              "Email": "bob@example.com", "Description": "The server was unable to deliver your message",
              "BouncedAt": "2026-11-25T10:00:00Z"}  # fmt: skip
    url = "/notifications/email/postmark/tracking/"
    client = Client()
    assert client.post(url, bounce, content_type="application/json").status_code in (400, 401, 403)
    assert Delivery.objects.get().status == "sent"
    auth = {"HTTP_AUTHORIZATION": "Basic aG9vazpzZWNyZXQtd29yZHM="}  # hook:secret-words
    assert client.post(url, bounce, content_type="application/json", **auth).status_code == 200
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.error_code) == ("failed", "bounced")
    assert "bounced: The server was unable" in render_settings(bob)
    complaint = {**bounce, "RecordType": "SpamComplaint", "Type": "SpamComplaint"}
    assert client.post(url, complaint, content_type="application/json", **auth).status_code == 200
    bob.refresh_from_db()
    assert bob.email_opted_out


def test_an_sms_stays_one_segment_when_the_message_is_not_plain_gsm(providers, room, ann, bob):
    twilio, _ = providers
    by_sms(bob)
    message = post(room, ann, "@bob 🎉 party… tonight")
    run_notifications()
    [sms] = twilio.sent_to(BOB_PHONE)
    assert sms["body"] == f"Parley: @ann mentioned you in #general https://parley.test/general/#message-{message.pk}"
