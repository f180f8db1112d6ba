import logging

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_not_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_safe

from . import avatars
from .forms import ProfileForm, SignUpForm
from .models import User

logger = logging.getLogger(__name__)


@login_not_required
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """Create an account and log straight in: the new user lands on the room list."""
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        logger.info("event=signup user=%s", user.pk)
        return redirect("home")
    return render(request, "accounts/signup.html", {"form": form})


@require_http_methods(["GET", "POST"])
def profile(request: HttpRequest) -> HttpResponse:
    """/me/: display name, avatar (thumbnailed on the worker pool), notification settings."""
    form = ProfileForm(request.POST or None, request.FILES or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        if form.cleaned_data.get("avatar"):
            messages.success(request, "Avatar uploaded: it shows everywhere as soon as it is ready.")
        return redirect("profile")
    context = {
        "form": form,
        "avatar": avatars.avatar_urls(request.user),
        "avatar_pending": avatars.thumbnails_pending(request.user),
    }
    return render(request, "accounts/profile.html", context)


@never_cache
@require_safe
def profile_avatar(request: HttpRequest) -> JsonResponse:
    """/me/avatar/: are the user's own thumbnails still being made, and where are they.

    /me/ asks while it says "being prepared": the room socket tells other
    users' pages of a new avatar, and /me/ holds no room socket.
    """
    return JsonResponse(
        {"pending": avatars.thumbnails_pending(request.user), "avatar": avatars.avatar_urls(request.user)}
    )


@require_safe
def avatar_placeholder(request: HttpRequest, handle: str) -> HttpResponse:
    """Initials on a colour of the handle's, for users whose thumbnails do not exist (yet)."""
    user = get_object_or_404(User, username=handle)
    response = HttpResponse(avatars.placeholder_svg(user), content_type="image/svg+xml")
    # Short: the initials follow the display name. The CSP stops an SVG opened as a page running anything.
    response["Cache-Control"] = "private, max-age=300"
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


@require_safe
def avatar_redirect(request: HttpRequest, handle: str, size: int) -> HttpResponse:
    """/avatars/<handle>/<size>: the user's current thumbnail, wherever it is.

    Room pages know handles, not content hashes: they point here and the browser
    follows to the content-hashed file (cached for a year). `no-cache` so a new
    avatar is found on the next page load.
    """
    if str(size) not in ("256", "64", "32"):
        raise Http404("No such avatar size.")
    user = get_object_or_404(User, username=handle)
    response = redirect(avatars.avatar_urls(user)[str(size)])
    response["Cache-Control"] = "private, no-cache"
    return response


@login_not_required
@require_safe
def avatar_file(request: HttpRequest, name: str) -> FileResponse:
    """A thumbnail from local media storage, cacheable for a year (its name is its content's hash).

    Only thumbnails: originals keep their EXIF and are never served. With a
    bucket configured the thumbnail URLs point at the bucket and this is unused.
    """
    if not avatars.THUMBNAIL_PATH.fullmatch(name):
        raise Http404("No such avatar.")
    try:
        fh = default_storage.open(f"{avatars.THUMBNAILS_DIR}/{name}", "rb")
    except FileNotFoundError:
        raise Http404("No such avatar.") from None
    response = FileResponse(fh, content_type="image/png" if name.endswith(".png") else "image/webp")
    response["Cache-Control"] = avatars.CACHE_FOREVER
    return response
