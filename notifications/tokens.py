"""Signed links and SMS codes: proof, without a table, that a link came from us."""

import hmac
import secrets

from django.core import signing
from django.utils.crypto import salted_hmac

UNSUBSCRIBE_SALT = "notifications.unsubscribe"
CONFIRM_EMAIL_SALT = "notifications.confirm-email"
CONFIRM_EMAIL_DAYS = 3


def unsubscribe_token(user) -> str:
    # No expiry: an unsubscribe link in an old email must still work.
    return signing.dumps({"u": user.pk}, salt=UNSUBSCRIBE_SALT)


def unsubscribe_user_id(token: str) -> int | None:
    try:
        return int(signing.loads(token, salt=UNSUBSCRIBE_SALT)["u"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def confirm_email_token(user, email: str) -> str:
    # The address is signed in: a link for an address the user has since changed confirms nothing.
    return signing.dumps({"u": user.pk, "e": email}, salt=CONFIRM_EMAIL_SALT)


def confirm_email_claim(token: str) -> tuple[int, str] | None:
    """(user id, email) of a valid, unexpired confirmation token."""
    try:
        data = signing.loads(token, salt=CONFIRM_EMAIL_SALT, max_age=CONFIRM_EMAIL_DAYS * 86400)
        return int(data["u"]), str(data["e"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None


def new_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def hash_code(phone: str, code: str) -> str:
    return salted_hmac("notifications.phone-code", f"{phone}:{code}", algorithm="sha256").hexdigest()


def code_matches(phone: str, code: str, code_hash: str) -> bool:
    return hmac.compare_digest(hash_code(phone, code.strip()), code_hash)
