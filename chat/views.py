import logging
import secrets

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .changes import latest_change
from .edits import is_moderator
from .forms import InviteForm, NewRoomForm
from .models import Room, TooManyRooms, is_valid_label
from .protocol import HISTORY_LIMIT, message_frame

logger = logging.getLogger(__name__)

INITIAL_MESSAGES = 50
ROOMS_PER_PAGE = 50
# Short labels tried before a long one: 30 x 30 x 100 of them, so they run out.
SHORT_LABEL_TRIES = 3
ADJECTIVES = (
    "amber brave calm clever cosmic eager fuzzy gentle golden happy jolly keen lively lucky "
    "mellow merry nimble polite proud quiet rapid shiny silly sunny swift tidy vivid witty zesty"
).split()
ANIMALS = (
    "badger beaver bison crane dingo eagle ferret gecko heron ibex koala lemur lynx marmot "
    "moose newt ocelot otter panda puffin quail raven seal sloth tapir tiger walrus wombat yak zebra"
).split()


def random_label(long: bool = False) -> str:
    """A readable label like "brave-otter-42"; `long`: "brave-otter-3fa9c2d1e07b" (2**48 suffixes, not 100)."""
    suffix = secrets.token_hex(6) if long else secrets.randbelow(100)
    return f"{secrets.choice(ADJECTIVES)}-{secrets.choice(ANIMALS)}-{suffix}"


def too_many_rooms(request: HttpRequest) -> HttpResponse:
    """The page instead of a room the user may not create yet."""
    logger.info("event=room_create_refused reason=limit user=%s", request.user.pk)
    context = {"limit": settings.CHAT_ROOM_CREATE_LIMIT, "minutes": round(settings.CHAT_ROOM_CREATE_WINDOW / 60)}
    return render(request, "chat/too_many_rooms.html", context, status=429)


def visible_room_or_404(label: str, user) -> Room:
    """The room, if `user` may see it. A private room is a 404 to others: nothing leaks."""
    try:
        return Room.objects.find(label, user)
    except Room.DoesNotExist:
        raise Http404("No such room.") from None


@login_not_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "home.html")
    page = Paginator(Room.objects.listed_for(request.user), ROOMS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "chat/rooms.html", {"rooms": page, "form": NewRoomForm()})


@require_POST
def new_room(request: HttpRequest) -> HttpResponse:
    form = NewRoomForm(request.POST)
    is_private = form.is_valid() and form.cleaned_data["is_private"]
    # Once the short labels run out, long ones: five of those all taken does not happen.
    for attempt in range(SHORT_LABEL_TRIES + 5):
        try:
            room = Room.objects.create_by(request.user, random_label(long=attempt >= SHORT_LABEL_TRIES), is_private)
        except TooManyRooms:
            return too_many_rooms(request)
        except IntegrityError:
            continue
        logger.info("event=room_created room=%s private=%s user=%s", room.label, is_private, request.user.pk)
        return redirect("room", label=room.label)
    raise RuntimeError("five long random labels in a row were taken")


@require_GET
def room(request: HttpRequest, label: str) -> HttpResponse:
    """The room page. Visiting a free (valid) label creates a public room."""
    if label != label.lower() and is_valid_label(label.lower()):
        return redirect("room", label=label.lower(), permanent=True)
    if not is_valid_label(label):
        raise Http404("Room labels are lower-case letters, digits, '-' or '_', at most 50 characters.")
    room = Room.objects.filter(label=label).first()
    if room is None:
        try:
            room = Room.objects.create_by(request.user, label)
            logger.info("event=room_created room=%s private=False user=%s", room.label, request.user.pk)
        except TooManyRooms:
            return too_many_rooms(request)
        except IntegrityError:  # another request made it first
            room = Room.objects.get(label=label)
    if not room.can_view(request.user):
        raise Http404("No such room.")
    # Read before the messages: a change made in between is sent again by `sync`, not lost.
    change_seq = latest_change(room)
    recent = list(room.messages.select_related("user", "room").order_by("-id")[: INITIAL_MESSAGES + 1])
    has_more = len(recent) > INITIAL_MESSAGES
    initial = [message_frame(m) for m in reversed(recent[:INITIAL_MESSAGES])]
    context = {
        "room": room,
        "chat_config": {
            "label": room.label,
            "handle": request.user.username,
            "socket_path": f"/chat/{room.label}/",
            "history_url": f"/{room.label}/messages",
            "messages": initial,
            "has_more": has_more,
            "change_seq": change_seq,
            "can_moderate": is_moderator(room, request.user),
        },
        "can_invite": room.is_private and room.created_by_id == request.user.pk,
        "members": room.memberships.select_related("user").order_by("user__username") if room.is_private else (),
        "invite_form": InviteForm(),
    }
    return render(request, "chat/room.html", context)


@require_POST
def invite(request: HttpRequest, label: str) -> HttpResponse:
    """The creator of a private room adds a member by handle."""
    room = visible_room_or_404(label, request.user)
    if not room.is_private or room.created_by_id != request.user.pk:
        return HttpResponse("Only the creator of a private room can invite.", status=403)
    form = InviteForm(request.POST)
    if form.is_valid():
        user = form.cleaned_data["handle"]
        room.invite(user, invited_by=request.user)
        logger.info("event=invite room=%s user=%s by=%s", room.label, user.pk, request.user.pk)
        messages.success(request, f"@{user.username} can now join this room.")
    else:
        messages.error(request, " ".join(form.errors["handle"]))
    return redirect("room", label=room.label)


def _bad_request(detail: str) -> JsonResponse:
    return JsonResponse({"error": "invalid", "detail": detail}, status=400)


@require_http_methods(["GET"])
def history(request: HttpRequest, label: str) -> JsonResponse:
    """`GET /<label>/messages?before=<id>&limit=<n>`: older messages, oldest first."""
    try:
        room = Room.objects.find(label, request.user)
    except Room.DoesNotExist:
        return JsonResponse({"error": "not_found", "detail": "No such room."}, status=404)
    try:
        limit = int(request.GET.get("limit", INITIAL_MESSAGES))
        before = int(request.GET["before"]) if "before" in request.GET else None
    except ValueError:
        return _bad_request("before and limit must be integers.")
    if not 1 <= limit <= HISTORY_LIMIT:
        return _bad_request(f"limit must be between 1 and {HISTORY_LIMIT}.")
    if before is not None and before < 1:
        return _bad_request("before must be a positive message id.")
    messages_ = room.messages.select_related("user", "room").order_by("-id")
    if before is not None:
        messages_ = messages_.filter(id__lt=before)
    page = list(messages_[: limit + 1])
    return JsonResponse(
        {"messages": [message_frame(m) for m in reversed(page[:limit])], "has_more": len(page) > limit}
    )
