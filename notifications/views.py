import functools
import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLResolver, reverse
from django.urls.resolvers import RegexPattern
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from twilio.request_validator import RequestValidator

from . import content, notify
from .delivery import usable_channel
from .forms import NotificationSettingsForm, PhoneCodeForm
from .mentions import HANDLE, MAX_MENTIONS
from .models import Delivery, Notification
from .tasks import send_test_notification

logger = logging.getLogger(__name__)


def _back(request: HttpRequest) -> HttpResponse:
    """Where a settings form came from (the profile page), if it is ours; else the list."""
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = reverse("notifications:list")
    return redirect(target)


@require_GET
def handles(request: HttpRequest) -> HttpResponse:
    """Which of the asked handles (`?h=ann&h=bob`, at most MAX_MENTIONS) are users, for mentions.js.

    Per request rather than a list in the page: a user who signs up while the page is open
    is highlighted in the next message that names them.
    """
    asked = request.GET.getlist("h")
    if not asked or len(asked) > MAX_MENTIONS or not all(HANDLE.fullmatch(h) for h in asked):
        return JsonResponse({"error": f"Give 1 to {MAX_MENTIONS} handles as ?h=..."}, status=400)
    return JsonResponse({"handles": sorted(notify.known_handles(asked))})


@require_GET
def notification_list(request: HttpRequest) -> HttpResponse:
    notifications = Notification.objects.filter(user=request.user).select_related("room", "message__user")
    page = Paginator(notifications, 50).get_page(request.GET.get("page"))
    return render(request, "notifications/list.html", {"page": page, "unread": notify.unread_count(request.user)})


@require_GET
def notification_open(request: HttpRequest, pk: int) -> HttpResponse:
    """Follow a notification to its message, or an invitation to its room, marking it read on the way."""
    notification = get_object_or_404(Notification.objects.select_related("message__room", "room"), pk=pk,
                                     user=request.user)  # fmt: skip
    notify.mark_read(request.user, ids=[notification.pk])
    if notification.message_id:
        return redirect(reverse("room", args=[notification.message.room.label]) + f"#message-{notification.message_id}")
    if notification.kind == Notification.Kind.INVITE:
        return redirect("room", label=notification.room.label)
    return redirect("notifications:list")


@require_POST
def mark_read(request: HttpRequest) -> HttpResponse:
    ids = [int(i) for i in request.POST.getlist("id") if i.isdigit()] or None
    notify.mark_read(request.user, ids=ids)
    return _back(request)


@require_POST
def send_test(request: HttpRequest) -> HttpResponse:
    """Send me a test notification: through the notifications queue, like a mention.

    The message says where it goes, as the task will decide: by email or SMS only
    to a chosen, confirmed address, else to the bell alone.
    """
    send_test_notification.enqueue(request.user.pk)
    channel = usable_channel(request.user)
    if channel == Delivery.Channel.SMS:
        messages.info(request, f"A test SMS is on its way to {request.user.phone}.")
    elif channel == Delivery.Channel.EMAIL:
        messages.info(request, f"A test email is on its way to {request.user.email}.")
    else:
        messages.info(request, "A test notification is on its way to your bell, here in Parley. Mentions reach "
                      "you only here: confirm an email address or a number, then choose it, to get them there too.")
    return _back(request)


CHANNEL_NAMES = {"email": ("Email", "your email address"), "sms": ("SMS", "your number")}


@require_POST
def save_settings(request: HttpRequest) -> HttpResponse:
    form = NotificationSettingsForm(request.POST)
    if not form.is_valid():
        # The form lives on the profile page; its errors go back there with it.
        for field, errors in form.errors.items():
            label = form.fields[field].label if field in form.fields else ""
            for error in errors:
                messages.error(request, f"{label}: {error}" if label else error)
        return _back(request)
    change = notify.change_settings(
        request.user, email=form.cleaned_data["email"], phone=form.cleaned_data["phone"],
        channel=form.cleaned_data["mention_channel"],
    )  # fmt: skip
    if "email" in change.sent:
        messages.info(request, "We are sending a confirmation link to your new email address.")
    if "sms" in change.sent:
        messages.info(request, "We are texting a code to your new number: enter it below once it arrives.")
    if change.refused_channel:
        name, what = CHANNEL_NAMES[change.refused_channel]
        messages.warning(request, f"{name} can be chosen once {what} is confirmed.")
    messages.success(request, "Notification settings saved.")
    return _back(request)


@require_POST
def resend_confirmation(request: HttpRequest) -> HttpResponse:
    """Send a confirmation again, after one that could not be sent (the page shows why)."""
    channel = request.POST.get("channel", "")
    if channel in CHANNEL_NAMES and notify.resend_confirmation(request.user, channel):
        messages.info(request, "We are sending it again." if channel == "email" else "We are texting a new code.")
    else:
        messages.error(request, "Nothing was sent: that address is confirmed, or its confirmation has just gone out.")
    return _back(request)


@require_POST
def confirm_phone(request: HttpRequest) -> HttpResponse:
    form = PhoneCodeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Enter the 6-digit code from the SMS.")
    elif problem := notify.confirm_phone(request.user, form.cleaned_data["code"]):
        messages.error(request, problem)
    else:
        messages.success(request, "Your number is confirmed.")
    return _back(request)


@login_not_required
@require_http_methods(["GET", "POST"])
def confirm_email(request: HttpRequest, token: str) -> HttpResponse:
    """GET asks, POST confirms: link scanners fetch links, they do not press buttons."""
    if request.method == "POST":
        ok = notify.confirm_email(token)
        return render(request, "notifications/confirm_email.html", {"done": True, "ok": ok}, status=200 if ok else 400)
    return render(request, "notifications/confirm_email.html", {"done": False})


@csrf_exempt  # RFC 8058: mail clients POST "List-Unsubscribe=One-Click" with no token but the link's.
@login_not_required
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    if request.method == "POST":
        ok = notify.unsubscribe(token)
        return render(request, "notifications/unsubscribe.html", {"done": True, "ok": ok}, status=200 if ok else 400)
    return render(request, "notifications/unsubscribe.html", {"done": False})


@csrf_exempt  # Twilio signs its requests instead.
@login_not_required
@require_POST
def twilio_webhook(request: HttpRequest) -> HttpResponse:
    """Twilio's status callbacks and inbound replies (STOP). Only requests Twilio signed."""
    # Twilio signs the URL it called: ours as the world sees it, not as a proxy passed it on.
    url = content.absolute(request.get_full_path())
    validator = RequestValidator(settings.TWILIO_AUTH_TOKEN)
    signature = request.headers.get("X-Twilio-Signature", "")
    if not settings.TWILIO_AUTH_TOKEN or not validator.validate(url, request.POST.dict(), signature):
        logger.warning("event=twilio_webhook_rejected reason=bad_signature")
        return HttpResponseForbidden("bad signature")
    outcome = notify.twilio_report(request.POST.dict())
    logger.info("event=twilio_webhook outcome=%s", outcome)
    # An empty TwiML answer: no automatic reply from us.
    return HttpResponse("<Response/>", content_type="text/xml")


@csrf_exempt
@login_not_required
def esp_webhook(request: HttpRequest, path: str) -> HttpResponse:
    """anymail's webhook view for `path` (e.g. `postmark/tracking/`), answering a payload of the wrong kind with 400.

    anymail raises AnymailConfigurationError when a tracking event is posted to
    an inbound URL (or the other way round): a misconfigured ESP, or anyone who
    knows the URL. That is the sender's mistake, so a 400 saying which, not a 500.
    Every anymail webhook view is csrf_exempt and login_not_required, as this one is.
    """
    from anymail.exceptions import AnymailConfigurationError  # imports requests: see _esp_webhooks

    match = _esp_webhooks().resolve(path)  # Resolver404 (a 404) when anymail has no such webhook
    try:
        return match.func(request, *match.args, **match.kwargs)
    except AnymailConfigurationError as error:
        detail = str(error).split("\n", 1)[0]
        logger.warning("event=esp_webhook_rejected reason=wrong_payload path=%s detail=%r", request.path, detail)
        body = f"This webhook URL does not take this payload: {detail}"
        return HttpResponseBadRequest(body, content_type="text/plain")


@functools.cache
def _esp_webhooks() -> URLResolver:
    """anymail's webhook URLs, loaded by the first webhook call rather than with the URLconf.

    anymail.urls imports every ESP's webhook module, and Amazon SES's imports
    boto3: memory every process that loads the URLconf (each daphne, each
    worker that builds a link) would hold for one ESP's webhooks at most.
    """
    import anymail.urls

    return URLResolver(RegexPattern(r"^"), anymail.urls.urlpatterns)
