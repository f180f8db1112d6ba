from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from .models import User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "display_name", "email", "mention_channel", "is_staff", "date_joined")
    search_fields = ("username", "display_name", "email")
    fieldsets = DjangoUserAdmin.fieldsets + (
        (
            "Parley",
            {
                "fields": (
                    "display_name",
                    "mention_channel",
                    "email_confirmed",
                    "phone",
                    "phone_confirmed",
                    "email_opted_out",
                    "sms_opted_out",
                )
            },
        ),
    )
