from django.urls import path

from . import views

app_name = "notifications"
urlpatterns = [
    path("", views.notification_list, name="list"),
    path("<int:pk>/", views.notification_open, name="open"),
    path("read/", views.mark_read, name="mark_read"),
    path("handles/", views.handles, name="handles"),
    path("test/", views.send_test, name="test"),
    path("settings/", views.save_settings, name="settings"),
    path("confirm-phone/", views.confirm_phone, name="confirm_phone"),
    path("confirm-again/", views.resend_confirmation, name="resend_confirmation"),
    path("confirm-email/<str:token>/", views.confirm_email, name="confirm_email"),
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("twilio/", views.twilio_webhook, name="twilio_webhook"),
    # The ESP's tracking webhooks (bounces, complaints): e.g. email/postmark/tracking/,
    # behind basic auth with ANYMAIL_WEBHOOK_SECRET. One route for all of anymail's
    # (views.esp_webhook), which imports them on the first call, not with the URLconf.
    path("email/<path:path>", views.esp_webhook, name="esp_webhook"),
]
