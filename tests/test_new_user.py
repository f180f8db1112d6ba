"""What a new user hits first (issue 18): each test here failed before its fix."""

import os
import re
import signal
import subprocess
from datetime import timedelta

import phonenumbers
import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.template import Context, Template
from django.test import Client
from django.utils import timezone

from chat.models import Room
from notifications.forms import NotificationSettingsForm
from tests.processes import ROOT, base_env, wait_until
from tests.servers import free_port, wait_for_port
from tests.test_production_shape import signed_up_session
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


@pytest.mark.e2e
def test_make_run_on_another_port_sends_links_to_that_port(tmp_path):
    """Item 2: `make run PORT=<p>` (DEBUG, no PARLEY_BASE_URL): a confirmation link leads to port p."""
    port = free_port()
    env = base_env(SQLITE_PATH=str(tmp_path / "db.sqlite3"), MEDIA_ROOT=str(tmp_path / "media"))
    env.pop("PARLEY_BASE_URL", None)
    log_path = tmp_path / "make-run.log"
    # -o: the shared virtualenv is installed already; reinstalling is not what is tested here.
    server = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "run", f"PORT={port}"], cwd=ROOT, env=env,
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=90, proc=server)
        base = f"http://127.0.0.1:{port}"
        session = signed_up_session(base, "ann")
        session.get(f"{base}/me/", timeout=10).raise_for_status()
        saved = session.post(f"{base}/notifications/settings/", timeout=10, data={
            "csrfmiddlewaretoken": session.cookies["csrftoken"], "mention_channel": "app",
            "email": "ann@example.com", "phone": "", "next": "/me/",
        })  # fmt: skip
        assert saved.status_code == 200 and saved.url == f"{base}/me/"
        # The console mail backend prints the confirmation email when the embedded worker sends it.
        link = wait_until(
            lambda: re.search(r"(http://[^/\s]+)/notifications/confirm-email/", log_path.read_text(errors="replace")),
            timeout=30, interval=0.2, message="the confirmation email",
        )  # fmt: skip
        assert link.group(1) == base
        assert "http://127.0.0.1:8000" not in log_path.read_text(errors="replace").split("Subject:", 1)[1]
    except BaseException:
        print(log_path.read_text(errors="replace"))
        raise
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)


def test_check_deploy_warns_without_an_https_base_url(settings):
    """Item 2: production keeps PARLEY_BASE_URL the rule; `check --deploy` says when it is unset or plain HTTP."""
    from django.core.checks import run_checks

    def warnings() -> set[str]:
        return {m.id for m in run_checks(include_deployment_checks=True) if m.id.startswith("notifications.")}

    settings.PARLEY_BASE_URL = ""
    assert warnings() == {"notifications.W001"}
    settings.PARLEY_BASE_URL = "http://parley.example.com"
    assert warnings() == {"notifications.W002"}
    settings.PARLEY_BASE_URL = "https://parley.example.com"
    assert warnings() == set()


def test_a_404_under_debug_is_parleys_page_not_the_url_list(settings, client):
    """Item 6: `make run` is DEBUG; an unknown address or an unseen room shows Parley's 404 page."""
    settings.DEBUG = True
    client.force_login(get_user_model().objects.create_user("ann"))
    for path in ("/no/such/page/", "/Not A Label!/", "/me/nothing/"):
        response = client.get(path)
        page = response.content.decode()
        assert response.status_code == 404, path
        assert "<h1>Not found</h1>" in page and "URLconf" not in page and "admin/" not in page, path
    # A JSON 404 is an answer, not a page: left alone.
    response = client.get("/nowhere/messages")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_every_page_has_a_favicon(client):
    """Item 6: base.html links an icon that is served, so browsers stop asking for /favicon.ico."""
    page = client.get("/").content.decode()
    href = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page).group(1)
    assert href == "/static/favicon.svg"
    assert finders.find("favicon.svg").endswith("static/favicon.svg")


def profile_page(client: Client) -> str:
    return client.get("/me/").content.decode()


def channel_options(page: str) -> list[str]:
    return re.findall(r'name="mention_channel" value="(\w+)"', page)


def test_sms_without_twilio_says_why_offers_a_retry_and_is_not_chosen(providers, settings):
    """Item 4: a code that could not be sent is shown with its reason and a retry; SMS waits for a confirmed number."""
    twilio, _ = providers
    settings.TWILIO_ACCOUNT_SID = settings.TWILIO_AUTH_TOKEN = settings.TWILIO_FROM_NUMBER = ""
    bob = get_user_model().objects.create_user("bob")
    client = Client()
    client.force_login(bob)
    assert channel_options(profile_page(client)) == ["app"]
    response = client.post("/notifications/settings/", {"mention_channel": "sms", "phone": "+1 415 555 0101",
                                                        "email": "", "next": "/me/"}, follow=True)  # fmt: skip
    page = response.content.decode()
    assert "SMS can be chosen once your number is confirmed." in page
    assert "texting a code…" in page and 'name="code"' not in page and "waiting for" not in page
    bob.refresh_from_db()
    assert (bob.phone, bob.mention_channel) == ("+14155550101", "app")

    run_notifications()  # the code cannot be texted
    page = profile_page(client)
    assert "The code could not be texted to +14155550101: SMS is not set up on this Parley server" in page
    assert "Text me a code again" in page and 'name="code"' not in page and "waiting for" not in page
    assert channel_options(page) == ["app"]

    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = twilio.account_sid, twilio.auth_token
    settings.TWILIO_FROM_NUMBER = twilio.from_number
    client.post("/notifications/confirm-again/", {"channel": "sms", "next": "/me/"})
    run_notifications()
    page = profile_page(client)
    assert "could not be texted" not in page and "waiting for the code we texted" in page and 'name="code"' in page
    # A code that went out is not sent again within the minute (each text costs).
    page = client.post("/notifications/confirm-again/", {"channel": "sms", "next": "/me/"}, follow=True)
    assert "Nothing was sent" in page.content.decode()
    run_notifications()
    [sms] = twilio.sent_to("+14155550101")
    client.post("/notifications/confirm-phone/", {"code": re.search(r"code: (\d{6})", sms["body"]).group(1)})
    assert channel_options(profile_page(client)) == ["app", "sms"]
    client.post("/notifications/settings/", {"mention_channel": "sms", "phone": "+14155550101", "email": ""})
    bob.refresh_from_db()
    assert (bob.phone_confirmed, bob.mention_channel) == (True, "sms")


def test_a_failed_confirmation_email_is_shown_with_a_retry(providers):
    """Item 4, email: a refused confirmation says why, and "Send it again" sends a new link."""
    _, postmark = providers
    bob = get_user_model().objects.create_user("bob")
    client = Client()
    client.force_login(bob)
    postmark.script(("error", 422, 406))
    client.post("/notifications/settings/", {"mention_channel": "email", "email": "bob@example.com", "phone": ""})
    run_notifications()
    page = profile_page(client)
    assert "The confirmation email to bob@example.com could not be sent: " in page and "Send it again" in page
    assert channel_options(page) == ["app"]
    client.post("/notifications/confirm-again/", {"channel": "email"})
    run_notifications()
    page = profile_page(client)
    assert "could not be sent" not in page and "waiting for confirmation: check your inbox" in page
    assert len(postmark.sent_to("bob@example.com")) == 1


def test_the_test_notification_message_says_where_it_goes(providers):
    """Item 4: "on its way" names the channel the task will use, and nothing else."""
    bob = get_user_model().objects.create_user("bob")
    client = Client()
    client.force_login(bob)
    bob.phone = "+14155550101"  # not confirmed: nothing goes there
    bob.save()
    page = client.post("/notifications/test/", {"next": "/me/"}, follow=True).content.decode()
    assert "on its way to your bell, here in Parley" in page and "A test SMS" not in page
    bob.phone_confirmed, bob.mention_channel = True, "sms"
    bob.save()
    page = client.post("/notifications/test/", {"next": "/me/"}, follow=True).content.decode()
    assert "A test SMS is on its way to +14155550101." in page
