import logging
import secrets

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .forms import InviteForm, NewRoomForm
from .models import Room, is_valid_label
from .protocol import HISTORY_LIMIT, message_frame

logger = logging.getLogger(__name__)

INITIAL_MESSAGES = 50
ADJECTIVES = (
    "amber brave calm clever cosmic eager fuzzy gentle golden happy jolly keen lively lucky "
    "mellow merry nimble polite proud quiet rapid shiny silly sunny swift tidy vivid witty zesty"
).split()
ANIMALS = (
    "badger beaver bison crane dingo eagle ferret gecko heron ibex koala lemur lynx marmot "
    "moose newt ocelot otter panda puffin quail raven seal sloth tapir tiger walrus wombat yak zebra"
).split()


def random_label() -> str:
    """A readable label like "brave-otter-42"."""
    return f"{secrets.choice(ADJECTIVES)}-{secrets.choice(ANIMALS)}-{secrets.randbelow(100)}"


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
    rooms = Room.objects.visible_to(request.user).order_by("-last_activity_at")
    return render(request, "chat/rooms.html", {"rooms": rooms, "form": NewRoomForm()})


@require_POST
def new_room(request: HttpRequest) -> HttpResponse:
    form = NewRoomForm(request.POST)
    is_private = form.is_valid() and form.cleaned_data["is_private"]
    for _ in range(10):  # 30 x 30 x 100 labels: a collision is rare, ten in a row is not going to happen
        try:
            with transaction.atomic():
                room = Room.objects.create(label=random_label(), is_private=is_private, created_by=request.user)
                if is_private:
                    room.invite(request.user)
        except IntegrityError:
            continue
        logger.info("event=room_created room=%s private=%s user=%s", room.label, is_private, request.user.pk)
        return redirect("room", label=room.label)
    raise RuntimeError("no free room label after 10 attempts")


@require_GET
def room(request: HttpRequest, label: str) -> HttpResponse:
    """The room page. Visiting a free (valid) label creates a public room."""
    if label != label.lower() and is_valid_label(label.lower()):
        return redirect("room", label=label.lower(), permanent=True)
    if not is_valid_label(label):
        raise Http404("Room labels are lower-case letters, digits, '-' or '_', at most 50 characters.")
    room, created = Room.objects.get_or_create(label=label, defaults={"created_by": request.user})
    if created:
        logger.info("event=room_created room=%s private=False user=%s", room.label, request.user.pk)
    elif not room.can_view(request.user):
        raise Http404("No such room.")
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
