"""Access ends with the session: a logout, a password change, a deactivation or a deleted user
closes every socket of that user on every daphne (project.access)."""

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.http import HttpRequest

from project.access import announce_access_change

User = get_user_model()

# The fields a socket's access depends on: the password (the session's auth
# hash), is_active (Django's backend refuses inactive users) and is_staff (/tasks/).
ACCESS_FIELDS = ("password", "is_active", "is_staff")


@receiver(user_logged_out)
def on_logout(sender: type, request: HttpRequest, user: AbstractBaseUser | None, **kwargs: Any) -> None:
    if user is not None:
        # logout() deletes the session after this signal: name it, so its sockets need not find it gone.
        announce_access_change(user.pk, "logout", session_key=request.session.session_key)


@receiver(pre_save, sender=User)
def remember_access_fields(sender: type, instance: AbstractBaseUser, update_fields: Iterable[str] | None = None,
                           **kwargs: Any) -> None:  # fmt: skip
    """Note whether this save changes what access depends on (read before the row is written)."""
    instance._access_changed = None
    if instance.pk is None or (update_fields is not None and not set(update_fields) & set(ACCESS_FIELDS)):
        return  # a new user has no sockets; a save of other fields (last_login) changes nothing here
    old = User.objects.filter(pk=instance.pk).values(*ACCESS_FIELDS).first()
    if old is not None:
        changed = [field for field in ACCESS_FIELDS if old[field] != getattr(instance, field)]
        instance._access_changed = ",".join(changed) or None


@receiver(post_save, sender=User)
def on_access_fields_saved(sender: type, instance: AbstractBaseUser, **kwargs: Any) -> None:
    if getattr(instance, "_access_changed", None):
        announce_access_change(instance.pk, instance._access_changed)
        instance._access_changed = None


@receiver(post_delete, sender=User)
def on_user_deleted(sender: type, instance: AbstractBaseUser, **kwargs: Any) -> None:
    announce_access_change(instance.pk, "deleted")
