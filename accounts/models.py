from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as AuthUserManager
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower

handle_validator = RegexValidator(
    r"^[A-Za-z0-9_-]{1,30}\Z",
    "A handle has 1 to 30 letters, digits, '_' or '-'.",
)

# `@here` mentions everyone present in a room, so nobody may be called "here".
RESERVED_HANDLES = {"here"}


def validate_not_reserved(handle: str) -> None:
    if handle.lower() in RESERVED_HANDLES:
        raise ValidationError("That handle is reserved.", code="reserved")


def login_throttle_key(request, credentials: dict | None = None) -> str | None:
    """The handle a login attempt counts against (django-axes' AXES_USERNAME_CALLABLE).

    Handles log in in any case, so "ANN" and "ann" must count as one account:
    otherwise each spelling of a handle would get its own allowance of guesses.
    """
    data = credentials if credentials else getattr(request, "POST", {})
    username = data.get("username") if data else None
    return username.lower() if isinstance(username, str) else username


class UserManager(AuthUserManager):
    def get_by_natural_key(self, username: str) -> "User":
        """The user whose handle is `username` in any case: handles are unique regardless of
        case, so "ANN" logs in as ann (auth's backends look users up through this)."""
        return self.get(username__iexact=username)

    def lock(self, pk: int) -> "User | None":
        """The user's row, locked until the transaction ends; None if there is no such user.

        The one way Parley decides things one user at a time: their deliveries
        (notifications), their job starts against the per-user limit (reports), an
        avatar upload against a thumbnail task's sweep (accounts). A no-op on SQLite.
        """
        return self.select_for_update().filter(pk=pk).first()


class User(AbstractUser):
    """A Parley user. The handle is Django's username, so auth works unchanged."""

    objects = UserManager()

    username = models.CharField(
        "handle",
        max_length=30,
        unique=True,
        validators=[handle_validator, validate_not_reserved],
        help_text="1 to 30 letters, digits, '_' or '-'. Others @mention you by it.",
        error_messages={"unique": "That handle is taken."},
    )

    class Meta:
        constraints = [
            # @mentions are case-insensitive, so handles must be too.
            models.UniqueConstraint(Lower("username"), name="accounts_user_handle_ci_unique"),
        ]

    display_name = models.CharField(max_length=50, blank=True)

    # How an @mention reaches this user outside Parley (notifications app).
    class MentionChannel(models.TextChoices):
        APP = "app", "In Parley only"
        EMAIL = "email", "Email"
        SMS = "sms", "SMS"

    mention_channel = models.CharField(max_length=5, choices=MentionChannel.choices, default=MentionChannel.APP)
    # Nothing is sent to an address until its owner has confirmed it.
    email_confirmed = models.BooleanField(default=False)
    phone = models.CharField("phone number", max_length=20, blank=True, help_text="E.164, e.g. +14155550100")
    phone_confirmed = models.BooleanField(default=False)
    # One-click unsubscribe, and SMS "STOP" as reported by Twilio.
    email_opted_out = models.BooleanField(default=False)
    sms_opted_out = models.BooleanField(default=False)

    # The avatar as uploaded, in default_storage under avatar-originals/ (never served:
    # it may carry GPS EXIF). accounts.uploads stores it named by content hash, and
    # accounts.tasks.make_thumbnails makes the thumbnails from it on the `thumbnails` queue.
    avatar = models.FileField(upload_to="avatar-originals/", max_length=200, blank=True, editable=False)
    # Content hash of the original whose thumbnails exist; blank means "show the placeholder".
    # It moves only once a new set is complete, so the old set is shown until then.
    avatar_digest = models.CharField(max_length=64, blank=True, editable=False)

    @property
    def handle(self) -> str:
        return self.username
