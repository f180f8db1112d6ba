from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("new/", views.new_room, name="new_room"),
    # str, not slug: a bad label gets our 404 page (and mixed case a redirect).
    path("<str:label>/", views.room, name="room"),
    path("<str:label>/messages", views.history, name="history"),
    path("<str:label>/invite/", views.invite, name="invite"),
]
