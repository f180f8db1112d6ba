from django.contrib import admin

from .models import Delivery, Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "kind", "room", "created_at", "read_at", "delivery"]
    list_filter = ["kind"]
    raw_id_fields = ["user", "room", "message", "delivery"]


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "kind", "channel", "status", "to", "attempts", "send_after", "finished_at"]
    list_filter = ["status", "channel", "kind"]
    search_fields = ["to", "provider_id"]
    raw_id_fields = ["user", "room"]
