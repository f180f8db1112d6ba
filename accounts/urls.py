from django.conf import settings
from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    # LoginView is already @login_not_required; LogoutView only answers POST.
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("me/", views.profile, name="profile"),
    path("me/avatar/", views.profile_avatar, name="profile_avatar"),
    path("avatars/<str:handle>.svg", views.avatar_placeholder, name="avatar_placeholder"),
    path("avatars/<str:handle>/<int:size>", views.avatar_redirect, name="avatar"),
]

# Thumbnails on the local disk are served by Django (with a year's cache); a bucket serves its own.
if not settings.MEDIA_URL.startswith(("http://", "https://", "//")):
    urlpatterns.append(
        path(f"{settings.MEDIA_URL.strip('/')}/avatars/<path:name>", views.avatar_file, name="avatar_file")
    )
