"""The search page and the messages around a permalinked one (chat.search does the work)."""

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .models import Room
from .protocol import message_frame
from .search import MAX_QUERY_LENGTH, SearchError, SearchRateLimited, search

logger = logging.getLogger(__name__)

# Messages each side of a permalinked message, and per "newer" page after it.
CONTEXT_EACH_SIDE = 25
CONTEXT_PAGE = 50


@require_GET
def search_page(request: HttpRequest) -> HttpResponse:
    """`GET /search/?q=...&page=n`: results (200), a message about the query (400) or the rate limit (429)."""
    text = request.GET.get("q", "")
    context = {"q": text[:MAX_QUERY_LENGTH * 2], "max_length": MAX_QUERY_LENGTH, "page": None, "error": ""}
    status = 200
    if text.strip():
        try:
            page_number = int(request.GET.get("page", "1"))
        except ValueError:
            page_number = 0
        try:
            context["page"] = search(request.user, text, page_number)
        except SearchError as error:
            context["error"], status = str(error), 400
        except SearchRateLimited:
            logger.info("event=search_rate_limited user=%s", request.user.pk)
            context["error"], status = "Too many searches; wait a minute and try again.", 429
    return render(request, "chat/search.html", context, status=status)


@require_GET
def message_context(request: HttpRequest, label: str) -> JsonResponse:
    """`GET /<label>/context?around=<id>` or `?after=<id>`: the messages a permalink opens on, oldest first.

    around: CONTEXT_EACH_SIDE messages each side of the message (which must be
    in this room); after: the CONTEXT_PAGE messages after an id. Both report
    whether there is more on their open side(s).
    """
    try:
        room = Room.objects.find(label, request.user)
    except Room.DoesNotExist:
        return JsonResponse({"error": "not_found", "detail": "No such room."}, status=404)
    try:
        around = int(request.GET["around"]) if "around" in request.GET else None
        after = int(request.GET["after"]) if "after" in request.GET else None
    except ValueError:
        return JsonResponse({"error": "invalid", "detail": "around and after must be integers."}, status=400)
    if (around is None) == (after is None):
        return JsonResponse({"error": "invalid", "detail": "Give exactly one of around or after."}, status=400)
    messages = room.messages.select_related("user", "room")
    if around is not None:
        if not messages.filter(pk=around).exists():
            return JsonResponse({"error": "not_found", "detail": "No such message in this room."}, status=404)
        older = list(messages.filter(pk__lt=around).order_by("-id")[: CONTEXT_EACH_SIDE + 1])
        newer = list(messages.filter(pk__gte=around).order_by("id")[: CONTEXT_EACH_SIDE + 2])
        page = [*reversed(older[:CONTEXT_EACH_SIDE]), *newer[: CONTEXT_EACH_SIDE + 1]]
        has_older, has_newer = len(older) > CONTEXT_EACH_SIDE, len(newer) > CONTEXT_EACH_SIDE + 1
    else:
        newer = list(messages.filter(pk__gt=after).order_by("id")[: CONTEXT_PAGE + 1])
        page, has_older, has_newer = newer[:CONTEXT_PAGE], None, len(newer) > CONTEXT_PAGE
    return JsonResponse(
        {"messages": [message_frame(m) for m in page], "has_older": has_older, "has_newer": has_newer}
    )
