from django.conf import settings
from django.db import models
from django.db.models import Q


class Notification(models.Model):
    """One thing to tell a user inside Parley: a mention of them, an invitation to a private room, or a test.

    Every mention gets one, whatever the user's channel; email and SMS are
    Deliveries that carry one or more of these (gathered in a 5-minute window).
    """

    class Kind(models.TextChoices):
        MENTION = "mention", "Mention"
        INVITE = "invite", "Invitation"
        TEST = "test", "Test"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.MENTION)
    room = models.ForeignKey("chat.Room", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey("chat.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # The email or SMS that told the user about it outside Parley, if any.
    delivery = models.ForeignKey(
        "Delivery", null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # A retried mention task must not notify twice.
            models.UniqueConstraint(
                "user", "message", name="notifications_one_per_message", condition=Q(message__isnull=False)
            ),
            # Nor a retried invitation task.
            models.UniqueConstraint("user", "room", name="notifications_one_per_invite", condition=Q(kind="invite")),
        ]
        indexes = [models.Index("user", "read_at", name="notifications_unread_idx")]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user} ({self.pk})"

    @property
    def is_read(self) -> bool:
        return self.read_at is not None


class Delivery(models.Model):
    """One email or SMS, recorded before it is sent and updated the moment the provider answers.

    `in_flight_since` is set (and committed) just before the provider is called
    and cleared when its answer is recorded: an attempt that finds it set knows
    the previous one was cut off and must not send blind (see delivery.py).
    """

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        SMS = "sms", "SMS"

    class Kind(models.TextChoices):
        MENTION = "mention", "Mentions"
        INVITE = "invite", "Invitation"
        TEST = "test", "Test"
        CONFIRM = "confirm", "Confirmation"

    class Status(models.TextChoices):
        # Waiting for its 5-minute window; later mentions of the room join it.
        QUEUED = "queued", "Queued"
        # Content fixed; attempts under way (retries included).
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        # A refusal retrying cannot fix: invalid number, inactive address, opted out.
        FAILED = "failed", "Failed"
        # Cut off between the provider call and its answer, and the provider
        # cannot be asked: possibly sent, never sent twice.
        UNCERTAIN = "uncertain", "Possibly sent"
        # Nothing to send by the time it was due (all read, or the channel changed).
        SKIPPED = "skipped", "Not needed"

    FINAL = frozenset({Status.SENT, Status.FAILED, Status.UNCERTAIN, Status.SKIPPED})

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deliveries")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    channel = models.CharField(max_length=5, choices=Channel.choices)
    room = models.ForeignKey("chat.Room", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Fixed when sending starts, so every attempt sends (and a lookup matches) the same thing.
    to = models.CharField(max_length=254, blank=True)
    subject = models.CharField(max_length=200, blank=True)
    body = models.TextField(blank=True)
    html = models.TextField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    send_after = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    in_flight_since = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    provider_id = models.CharField(max_length=100, blank=True, db_index=True)
    # What the provider reported later (Twilio status callback: delivered, undelivered...).
    provider_status = models.CharField(max_length=30, blank=True)
    error_code = models.CharField(max_length=30, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            # One open (gathering) mention delivery per user and room.
            models.UniqueConstraint(
                "user", "room", name="notifications_one_open_delivery",
                condition=Q(status="queued", kind="mention"),
            ),
        ]  # fmt: skip
        indexes = [models.Index("user", "room", models.F("send_after").desc(), name="notifications_window_idx")]

    def __str__(self) -> str:
        return f"{self.channel} {self.kind} to {self.user} [{self.status}]"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class PhoneConfirmation(models.Model):
    """The code texted to a new phone number; the number is used once it comes back."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    phone = models.CharField(max_length=20)
    # An HMAC of the code, not the code (the Delivery that texts it forgets it once sent).
    code_hash = models.CharField(max_length=128)
    created_at = models.DateTimeField()
    attempts_left = models.PositiveSmallIntegerField(default=5)

    def __str__(self) -> str:
        return f"{self.user} {self.phone}"
