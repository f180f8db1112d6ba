"""Permalinks: /<label>/messages?around=<id> returns the messages around one, however far back; ?after= fills gaps."""

import pytest

from accounts.models import User
from chat.models import Message, Room
from chat.views import CONTEXT_EACH_SIDE, INITIAL_MESSAGES

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(client):
    user = User.objects.create_user("ann")
    client.force_login(user)
    return user


def seed(room: Room, user: User, count: int) -> list[int]:
    """`count` messages stored directly (Room.post would rate-limit a burst); their ids, oldest first."""
    Message.objects.bulk_create(
        Message(room=room, user=user, text=f"m{i}", client_id=f"{room.label}-{i}") for i in range(count)
    )
    return list(room.messages.order_by("id").values_list("id", flat=True))


def test_a_message_5000_back_opens_in_its_context(client, ann):
    room = Room.objects.create(label="archive", created_by=ann)
    ids = seed(room, ann, 5_100)
    target = ids[-5_000]
    data = client.get(f"/archive/messages?around={target}").json()
    got = [m["id"] for m in data["messages"]]
    assert got == ids[-5_000 - CONTEXT_EACH_SIDE : -5_000 + CONTEXT_EACH_SIDE + 1]
    assert data["messages"][CONTEXT_EACH_SIDE]["text"] == "m100"
    assert data["has_older"] and data["has_newer"]
    # The gap to the newest messages fills page by page.
    after = client.get(f"/archive/messages?after={got[-1]}").json()
    assert [m["id"] for m in after["messages"]] == ids[ids.index(got[-1]) + 1 :][:INITIAL_MESSAGES]
    assert after["has_newer"]


def test_context_at_either_end_of_a_room(client, ann):
    room = Room.objects.create(label="short", created_by=ann)
    ids = seed(room, ann, 10)
    first = client.get(f"/short/messages?around={ids[0]}").json()
    assert [m["id"] for m in first["messages"]] == ids and not first["has_older"] and not first["has_newer"]
    last = client.get(f"/short/messages?after={ids[-1]}").json()
    assert last == {"messages": [], "has_older": None, "has_newer": False}


def test_a_message_of_another_room_or_a_hidden_room_is_not_found(client, ann):
    bob = User.objects.create_user("bob")
    public = Room.objects.create(label="public", created_by=ann)
    secret = Room.objects.create_by(bob, "secret", is_private=True)
    [hidden] = seed(secret, bob, 1)
    seed(public, ann, 3)
    # Asked through a room one can see: no message of another room comes back.
    assert client.get(f"/public/messages?around={hidden}").status_code == 404
    response = client.get(f"/secret/messages?around={hidden}")
    assert response.status_code == 404 and "m0" not in response.content.decode()
    # ?after= through the hidden room: the same 404, nothing of it.
    assert client.get("/secret/messages?after=0").status_code == 404


@pytest.mark.parametrize("query", ["around=x", "after=1.5", "after=-1", "around=0", "around=1&after=2", "before=5&around=2", "around=99999999"])
def test_bad_context_requests(client, ann, query):
    Room.objects.create(label="general", created_by=ann)
    response = client.get(f"/general/messages?{query}")
    assert response.status_code in (400, 404)
    assert response.json()["error"] in ("invalid", "not_found")


def test_context_requires_login(client):
    Room.objects.create(label="general")
    response = client.get("/general/messages?around=1")
    assert response.status_code == 302 and "/login/" in response["Location"]
