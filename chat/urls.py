from django.urls import path

from . import search_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("new/", views.new_room, name="new_room"),
    # Under the reserved "chat/": no room label can take these.
    path("chat/dm/", views.start_dm, name="start_dm"),
    path("chat/sidebar/", views.sidebar_fragment, name="sidebar"),
    path("search/", search_views.search_page, name="search"),
    # str, not slug: a bad label gets our 404 page (and mixed case a redirect).
    path("<str:label>/", views.room, name="room"),
    path("<str:label>/messages", views.history, name="history"),
    path("<str:label>/invite/", views.invite, name="invite"),
    path("<str:label>/join/", views.join, name="join"),
    path("<str:label>/leave/", views.leave, name="leave"),
    path("<str:label>/read/", views.read, name="read"),
]
