import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from chat.models import Message, Presence, RateLimited, Room, ServerProcess, is_valid_label, rooms_showing


@pytest.fixture
def ann():
    return User.objects.create_user("ann")


@pytest.mark.django_db
def test_post_stores_text_as_typed_and_bumps_activity(ann):
    room = Room.objects.create(label="r")
    before = room.last_activity_at
    message, created = room.post(ann, "  <i>hi</i>  ", "c1")
    assert created and message.text == "  <i>hi</i>  "
    room.refresh_from_db()
    assert room.last_activity_at > before


@pytest.mark.django_db
def test_post_same_client_id_returns_original(ann):
    room = Room.objects.create(label="r")
    first, created = room.post(ann, "one", "same")
    again, created_again = room.post(ann, "two", "same")
    assert created and not created_again
    assert again.pk == first.pk and again.text == "one"
    assert Message.objects.count() == 1


@pytest.mark.django_db
def test_same_client_id_from_another_user_is_another_message(ann):
    room = Room.objects.create(label="r")
    bob = User.objects.create_user("bob")
    room.post(ann, "one", "c")
    _, created = room.post(bob, "two", "c")
    assert created and Message.objects.count() == 2


@pytest.mark.django_db
def test_post_rate_limit(ann):
    room = Room.objects.create(label="r")
    for i in range(10):
        room.post(ann, "x", f"c{i}")
    with pytest.raises(RateLimited):
        room.post(ann, "x", "c10")
    # A retry of a stored message is still answered.
    assert room.post(ann, "x", "c3")[1] is False


@pytest.mark.parametrize(
    "label, valid",
    [("lunch", True), ("a-b_c-1", True), ("x" * 50, True), ("x" * 51, False), ("Lunch", False),
     ("", False), ("a b", False), ("café", False), ("admin", False), ("me", False), ("api", False)],
)  # fmt: skip
def test_labels(label, valid):
    assert is_valid_label(label) is valid


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_commit_in_id_order(ann):
    """The room-row lock serialises inserts, so ids commit in order: a reader that
    repeatedly asks for "id > last seen" (what `sync` does) never skips one."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises every write anyway")
    room = Room.objects.create(label="race")
    users = [User.objects.create_user(f"u{i}") for i in range(4)]
    errors, seen = [], []
    done = threading.Event()

    def poster(user):
        try:
            for i in range(8):
                room.post(user, f"{user.username}-{i}", f"{user.username}-{i}")
        except Exception as error:  # surfaced below
            errors.append(error)
        finally:
            connection.close()

    def reader():
        last = 0
        try:
            for _ in range(10_000):  # bounded; ends soon after the posters
                finished = done.is_set()
                new = list(Message.objects.filter(room=room, id__gt=last).order_by("id").values_list("id", flat=True))
                seen.extend(new)
                last = new[-1] if new else last
                if finished:
                    return
        finally:
            connection.close()

    threads = [threading.Thread(target=poster, args=(u,)) for u in users]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    done.set()
    watcher.join(30)
    assert not errors
    assert sorted(seen) == list(Message.objects.order_by("id").values_list("id", flat=True))
    assert len(seen) == 32
    for user in users:  # each user's messages in their own order
        texts = list(Message.objects.filter(user=user).order_by("id").values_list("text", flat=True))
        assert texts == [f"{user.username}-{i}" for i in range(8)]


@pytest.mark.django_db
def test_rooms_showing_a_user_are_where_they_are_present_or_posted_lately(ann):
    here, posted, long_ago, elsewhere = (Room.objects.create(label=label) for label in ("here", "posted", "old", "else"))
    bob = User.objects.create_user("bob")
    process = ServerProcess.objects.create(last_seen=timezone.now())
    Presence.objects.create(channel_name="ann-1", room=here, user=ann, process=process)
    Presence.objects.create(channel_name="bob-1", room=elsewhere, user=bob, process=process)
    posted.post(ann, "recent", "c1")
    posted.post(ann, "twice in one room", "c2")
    old, _ = long_ago.post(ann, "a month ago", "c3")
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    elsewhere.post(bob, "not ann", "c4")
    since = timezone.now() - timedelta(days=30)
    assert rooms_showing(ann.pk, since) == {here.pk, posted.pk}
    assert rooms_showing(bob.pk, since) == {elsewhere.pk}
    assert rooms_showing(User.objects.create_user("cy").pk, since) == set()
