import os
import threading

import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from accounts.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery 9"


def test_anonymous_sees_landing_signup_and_login(client):
    for name in ("home", "signup", "login"):
        response = client.get(reverse(name))
        assert response.status_code == 200, name
    assert b"Sign up" in client.get("/").content


def test_anonymous_is_sent_to_login_elsewhere(client):
    response = client.get("/lobby/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/lobby/")


def test_signup_creates_user_and_logs_in(client):
    response = client.post("/signup/", {"username": "ann_1", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(username="ann_1")
    assert user.check_password(PASSWORD)
    assert client.get("/").context["user"] == user


@pytest.mark.parametrize(
    "handle, error",
    [
        ("has space", "1 to 30 letters"),
        ("dot.ted", "1 to 30 letters"),
        ("x" * 31, "at most 30 characters"),
        ("ANN", "That handle is taken."),  # case-insensitive clash with "ann"
        ("Here", "That handle is reserved."),  # @here mentions everyone present
    ],
)
def test_signup_rejects_bad_handles(client, handle, error):
    User.objects.create_user("ann", password=PASSWORD)
    response = client.post("/signup/", {"username": handle, "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 200
    assert error in str(response.context["form"].errors["username"])
    assert not User.objects.filter(username=handle).exists()


def test_login_and_logout(client):
    User.objects.create_user("bob", password=PASSWORD)
    response = client.post("/login/", {"username": "bob", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").context["user"].username == "bob"
    assert client.get("/logout/").status_code == 405  # logging out takes a POST (CSRF-protected)
    response = client.post("/logout/")
    assert response.status_code == 302
    assert not client.get("/").context["user"].is_authenticated


def test_login_with_wrong_password_fails(client):
    User.objects.create_user("bob", password=PASSWORD)
    response = client.post("/login/", {"username": "bob", "password": "nope"})
    assert response.status_code == 200
    assert response.context["form"].errors


def test_admin_lists_users_rooms_messages(admin_client):
    for path in ("/admin/accounts/user/", "/admin/chat/room/", "/admin/chat/message/", "/admin/chat/membership/"):
        assert admin_client.get(path).status_code == 200, path


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(os.environ["PARLEY_TEST_STACK"] != "postgres", reason="row locks are PostgreSQL's")
def test_lock_holds_the_users_row_until_the_transaction_ends():
    ann = User.objects.create_user("ann")

    def another_session_can_lock() -> bool:
        outcome = []

        def try_lock():
            try:
                with transaction.atomic():
                    User.objects.select_for_update(nowait=True).filter(pk=ann.pk).first()
                outcome.append(True)
            except DatabaseError:
                outcome.append(False)
            finally:
                connection.close()

        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join(10)
        return outcome == [True]

    with transaction.atomic():
        assert User.objects.lock(ann.pk) == ann
        assert User.objects.lock(ann.pk + 1) is None
        assert not another_session_can_lock()
    assert another_session_can_lock()
