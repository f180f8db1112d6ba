"""The search page (chat.search does the work; a result's permalink opens through chat.views.history)."""

import logging

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .search import MAX_QUERY_LENGTH, SearchError, SearchRateLimited, search

logger = logging.getLogger(__name__)


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

