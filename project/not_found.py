"""Parley's own 404 page under DEBUG too.

`make run` serves with DEBUG on, where Django answers every 404 (an unknown
address, a room one may not see) with its technical page listing every URL
pattern. People using Parley that way see templates/404.html, as in production.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.defaults import page_not_found


class NotFoundPageMiddleware:
    """Last in MIDDLEWARE: it sees the 404 Django made of an Http404, from a view or from URL resolution."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # Only HTML pages: a JSON 404 (the history endpoint) is an answer, not a page.
        if settings.DEBUG and response.status_code == 404 and response.get("Content-Type", "").startswith("text/html"):
            return page_not_found(request, exception=None)
        return response
