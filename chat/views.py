import logging
import secrets

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import dm, sidebar
from .changes import latest_change
from .edits import is_moderator
from .forms import InviteForm, NewRoomForm
from .models import Room, TooManyRooms, is_valid_label
from .protocol import HISTORY_LIMIT, message_frame

logger = logging.getLogger(__name__)

INITIAL_MESSAGES = 50
# Messages shown above the first unread when a room opens there (opening_messages).
UNREAD_CONTEXT = 10
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
    if room is None and label.startswith(dm.DM_PREFIX):
        raise Http404("No such room.")  # direct messages are started from a handle (start_dm), never by address
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
    member = sidebar.membership(room, request.user)
    initial, has_more, first_unread = opening_messages(room, member.last_read_id if member else None)
    context = {
        "room": room,
        "chat_config": {
            "label": room.label,
            "handle": request.user.username,
            "socket_path": f"/chat/{room.label}/",
            "history_url": f"/{room.label}/messages",
            "messages": initial,
            "has_more": has_more,
            # The read position (None: not joined, nothing tracked) and the message the page opens at.
            "last_read_id": member.last_read_id if member else None,
            "first_unread_id": first_unread,
            "unread_cap": sidebar.UNREAD_CAP,
            "change_seq": change_seq,
            "can_moderate": is_moderator(room, request.user),
        },
        "sidebar": sidebar.rooms_for(request.user),
        "joined": member is not None,
        "dm_with": dm.other_member(room, request.user) if room.dm_key else None,
        "can_invite": room.is_private and not room.dm_key and room.created_by_id == request.user.pk,
        "members": room.memberships.select_related("user").order_by("user__username") if room.is_private else (),
        "invite_form": InviteForm(),
    }
    return render(request, "chat/room.html", context)


def opening_messages(room: Room, last_read_id: int | None) -> tuple[list[dict], bool, int | None]:
    """What a room page shows first: (message frames, older ones?, id of the first unread or None).

    The newest INITIAL_MESSAGES, unless the first unread is older than those:
    then it with UNREAD_CONTEXT messages before it, and what follows it; the
    page's socket syncs the rest (everything after the last one shown).
    """
    messages_ = room.messages.select_related("user", "room")
    first_unread = None
    if last_read_id is not None:
        first_unread = messages_.filter(id__gt=last_read_id).order_by("id").values_list("id", flat=True).first()
    recent = list(messages_.order_by("-id")[: INITIAL_MESSAGES + 1])
    newest = recent[:INITIAL_MESSAGES]
    if first_unread is None or first_unread >= newest[-1].pk:
        return [message_frame(m) for m in reversed(newest)], len(recent) > INITIAL_MESSAGES, first_unread
    before = list(messages_.filter(id__lt=first_unread).order_by("-id")[: UNREAD_CONTEXT + 1])
    after = list(messages_.filter(id__gte=first_unread).order_by("id")[: INITIAL_MESSAGES - UNREAD_CONTEXT])
    shown = [*reversed(before[:UNREAD_CONTEXT]), *after]
    return [message_frame(m) for m in shown], len(before) > UNREAD_CONTEXT, first_unread


@require_POST
def join(request: HttpRequest, label: str) -> HttpResponse:
    """Join a public room: it goes into the sidebar (a private room's members have joined already)."""
    room = visible_room_or_404(label, request.user)
    if not room.is_private:
        sidebar.join(room, request.user)
    return redirect("room", label=room.label)


@require_POST
def leave(request: HttpRequest, label: str) -> HttpResponse:
    """Leave a room, public or private (then it is gone until someone invites again); not a direct message."""
    room = visible_room_or_404(label, request.user)
    if room.dm_key:
        return HttpResponse("A direct message cannot be left.", status=400)
    sidebar.leave(room, request.user)
    if room.is_private:
        messages.info(request, f"You left #{room.label}.")
        return redirect("home")
    return redirect("room", label=room.label)


@require_POST
def read(request: HttpRequest, label: str) -> HttpResponse:
    """The "Mark as read" button: the read position moves to the room's newest message (pages do it live over a socket)."""
    from notifications import notify  # notifications imports chat: imported when used

    room = visible_room_or_404(label, request.user)
    if sidebar.mark_read(room, request.user) == 0:
        notify.mark_read(request.user, room=room)  # all read: its mentions too
    return redirect("room", label=room.label)


@require_POST
def start_dm(request: HttpRequest) -> HttpResponse:
    """`POST /chat/dm/` with `to`, a handle: the direct message with that person, started if need be."""
    # Checked as an invitation's handle is; named `to` so no page has two `handle` fields.
    form = InviteForm({"handle": request.POST.get("to", "")})
    if not form.is_valid():
        messages.error(request, " ".join(form.errors["handle"]))
        return redirect(request.POST.get("next") if url_has_allowed_host_and_scheme(
            request.POST.get("next"), allowed_hosts={request.get_host()}) else "home")  # fmt: skip
    try:
        room, _ = dm.start(request.user, form.cleaned_data["handle"])
    except TooManyRooms:
        return too_many_rooms(request)
    return redirect("room", label=room.label)


@require_GET
def sidebar_fragment(request: HttpRequest) -> HttpResponse:
    """`GET /chat/sidebar/?active=<label>`: the sidebar's list, re-read by pages when the user's rooms change."""
    context = {"sidebar": sidebar.rooms_for(request.user), "active": request.GET.get("active", "")[:50]}
    return render(request, "chat/_sidebar_lists.html", context)


@require_POST
def invite(request: HttpRequest, label: str) -> HttpResponse:
    """The creator of a private room adds a member by handle."""
    room = visible_room_or_404(label, request.user)
    if not room.is_private or room.dm_key or room.created_by_id != request.user.pk:
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


# Messages each side of a permalinked one (`around`).
CONTEXT_EACH_SIDE = 25
# after=0 pages from a room's first message.
LOWEST_ANCHOR = {"before": 1, "after": 0, "around": 1}


@require_http_methods(["GET"])
def history(request: HttpRequest, label: str) -> JsonResponse:
    """`GET /<label>/messages`: a page of the room's messages, oldest first, by one of

    - `?before=<id>&limit=<n>` (or neither: the newest `limit`), older messages as the reader scrolls up;
    - `?after=<id>&limit=<n>`, newer ones, to fill the gap below a permalinked message;
    - `?around=<id>`, CONTEXT_EACH_SIDE messages each side of one of this room's (a permalink).

    `has_older` / `has_newer` say whether there is more on a side the page is open to (null on
    the side it is not: `before` knows nothing newer, `after` nothing older).
    """
    try:
        room = Room.objects.find(label, request.user)
    except Room.DoesNotExist:
        return JsonResponse({"error": "not_found", "detail": "No such room."}, status=404)
    given = [name for name in ("before", "after", "around") if name in request.GET]
    if len(given) > 1:
        return _bad_request("Give at most one of before, after and around.")
    try:
        limit = int(request.GET.get("limit", INITIAL_MESSAGES))
        anchor = int(request.GET[given[0]]) if given else None
    except ValueError:
        return _bad_request("before, after, around and limit must be integers.")
    if not 1 <= limit <= HISTORY_LIMIT:
        return _bad_request(f"limit must be between 1 and {HISTORY_LIMIT}.")
    if anchor is not None and anchor < LOWEST_ANCHOR[given[0]]:
        return _bad_request(f"{given[0]} must be a message id of at least {LOWEST_ANCHOR[given[0]]}.")
    messages_ = room.messages.select_related("user", "room")
    has_older = has_newer = None
    if given == ["around"]:
        if not messages_.filter(pk=anchor).exists():
            return JsonResponse({"error": "not_found", "detail": "No such message in this room."}, status=404)
        older = list(messages_.filter(pk__lt=anchor).order_by("-id")[: CONTEXT_EACH_SIDE + 1])
        newer = list(messages_.filter(pk__gte=anchor).order_by("id")[: CONTEXT_EACH_SIDE + 2])
        page = [*reversed(older[:CONTEXT_EACH_SIDE]), *newer[: CONTEXT_EACH_SIDE + 1]]
        has_older, has_newer = len(older) > CONTEXT_EACH_SIDE, len(newer) > CONTEXT_EACH_SIDE + 1
    elif given == ["after"]:
        newer = list(messages_.filter(pk__gt=anchor).order_by("id")[: limit + 1])
        page, has_newer = newer[:limit], len(newer) > limit
    else:
        if anchor is not None:
            messages_ = messages_.filter(pk__lt=anchor)
        older = list(messages_.order_by("-id")[: limit + 1])
        page, has_older = older[:limit][::-1], len(older) > limit
    return JsonResponse(
        {"messages": [message_frame(m) for m in page], "has_older": has_older, "has_newer": has_newer}
    )
