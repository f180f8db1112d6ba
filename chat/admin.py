from django.contrib import admin

from .models import Membership, Message, Presence, Room, ServerProcess


class MembershipInline(admin.TabularInline):
    model = Membership
    fk_name = "room"
    extra = 0
    raw_id_fields = ("user", "invited_by")


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ("label", "is_private", "created_by", "created_at", "last_activity_at")
    list_filter = ("is_private",)
    search_fields = ("label",)
    raw_id_fields = ("created_by",)
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("room", "user", "invited_by", "created_at")
    search_fields = ("room__label", "user__username")
    raw_id_fields = ("room", "user", "invited_by")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "room", "user", "short_text", "created_at")
    list_filter = ("room",)
    search_fields = ("text", "user__username", "room__label")
    raw_id_fields = ("room", "user")
    list_select_related = ("room", "user")

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]


@admin.register(Presence)
class PresenceAdmin(admin.ModelAdmin):
    list_display = ("channel_name", "room", "user", "connected_at", "process")
    list_select_related = ("room", "user", "process")


@admin.register(ServerProcess)
class ServerProcessAdmin(admin.ModelAdmin):
    """The daphne processes holding room sockets: one whose last_seen is older than CHAT_PRESENCE_TTL is dead."""

    list_display = ("id", "started", "last_seen")
