"""What a new user hits first (issue 18): each test here failed before its fix."""

import re
from datetime import timedelta

import phonenumbers
import pytest
from django.contrib.auth import get_user_model
from django.template import Context, Template
from django.test import Client
from django.utils import timezone

from chat.models import Room
from notifications.forms import NotificationSettingsForm
from tests.fake_providers import fake_postmark, fake_twilio, providers  # noqa: F401 (fixtures)
from tests.test_notifications import by_email, post, run_notifications

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery 9"


def test_the_phone_fields_own_example_validates():
    """Item 3: the help text's example number is accepted as typed."""
    help_text = str(NotificationSettingsForm.base_fields["phone"].help_text)
    example = re.search(r"e\.g\. (\+[\d ]+\d)", help_text).group(1)
    form = NotificationSettingsForm({"mention_channel": "app", "email": "", "phone": example})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["phone"] == phonenumbers.format_number(
        phonenumbers.parse(example), phonenumbers.PhoneNumberFormat.E164
    )


def test_a_handle_logs_in_in_any_case():
    """Item 12: handles are unique regardless of case, so "ANN" and "Ann" log in as ann."""
    get_user_model().objects.create_user("ann", password=PASSWORD)
    for typed in ("ANN", "Ann", "ann"):
        client = Client()
        response = client.post("/login/", {"username": typed, "password": PASSWORD})
        assert response.status_code == 302 and response["Location"] == "/", typed
        assert client.get("/").context["user"].username == "ann"
    assert Client().post("/login/", {"username": "ANN", "password": "wrong"}).status_code == 200


def test_email_footer_links_to_the_settings_on_the_profile_page(providers, settings):
    """Item 8: "Change it" goes to /me/#notifications, where the settings are."""
    _, postmark = providers
    ann = get_user_model().objects.create_user("ann")
    bob = by_email(get_user_model().objects.create_user("bob"))
    room = Room.objects.create(label="general", created_by=ann)
    post(room, ann, "@bob hi")
    run_notifications()
    [email] = postmark.sent_to(bob.email)
    assert "Change it: https://parley.test/me/#notifications" in email["TextBody"]
    assert 'href="https://parley.test/me/#notifications"' in email["HtmlBody"]
    assert "/notifications/\n" not in email["TextBody"]


@pytest.mark.parametrize(
    "seconds, expected", [(0, "just now"), (59, "just now"), (-5, "just now"), (61, "1\xa0minute ago"),
                          (3 * 3600 + 5, "3\xa0hours ago")],
)  # fmt: skip
def test_relative_times_say_just_now_under_a_minute(seconds, expected):
    """Item 16: never "0 minutes ago"."""
    when = timezone.now() - timedelta(seconds=seconds)
    assert Template("{{ when|ago }}").render(Context({"when": when})) == expected
