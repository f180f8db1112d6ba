import json

import pytest

from accounts.models import User
from chat.models import RESERVED_LABELS, Message, Room

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(client):
    user = User.objects.create_user("ann")
    client.force_login(user)
    return user


@pytest.fixture
def bob():
    return User.objects.create_user("bob")


def seed(room, user, count: int) -> None:
    """Messages for the history tests, stored directly: Room.post would rate-limit a burst."""
    Message.objects.bulk_create(Message(room=room, user=user, text=f"m{i}", client_id=f"c{i}") for i in range(count))


def page_config(response) -> dict:
    return response.context["chat_config"]


def test_visiting_a_label_creates_the_room(client, ann):
    response = client.get("/lunch/")
    assert response.status_code == 200
    room = Room.objects.get(label="lunch")
    assert room.created_by == ann and not room.is_private
    assert page_config(response)["socket_path"] == "/chat/lunch/"
    assert b'id="chat-config"' in response.content


@pytest.mark.parametrize("path", ["/not%20a%20slug/", "/" + "a" * 51 + "/", "/caf%C3%A9/", "/a.b/"])
def test_bad_labels_get_a_404_page(client, ann, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "404.html" in [t.name for t in response.templates]  # our page, not a 500
    assert not Room.objects.exists()


def test_mixed_case_label_redirects_to_lower_case(client, ann):
    response = client.get("/Lunch/")
    assert response.status_code == 301 and response["Location"] == "/lunch/"


@pytest.mark.parametrize("label", sorted(RESERVED_LABELS))
def test_reserved_labels_are_never_rooms(client, ann, label):
    response = client.get(f"/{label}/")  # another route, or our 404: never a room page
    assert "chat_config" not in (response.context or {})
    assert not Room.objects.filter(label=label).exists()


def test_home_lists_visible_rooms_most_recent_first(client, ann, bob):
    old = Room.objects.create(label="old")
    new = Room.objects.create(label="new-one")
    hidden = Room.objects.create(label="bobs-secret-plans", is_private=True, created_by=bob)
    hidden.invite(bob)
    mine = Room.objects.create(label="mine", is_private=True, created_by=ann)
    mine.invite(ann)
    new.post(bob, "hi", "c0")  # empty rooms are listed to their creators only
    old.post(ann, "bump", "c1")  # old is now the most recently active
    rooms = list(client.get("/").context["rooms"])
    assert rooms[0] == old
    assert set(rooms) == {old, new, mine}
    assert b"bobs-secret-plans" not in client.get("/").content


def test_new_room_gets_a_readable_label(client, ann):
    response = client.post("/new/")
    room = Room.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/{room.label}/"
    adjective, animal, number = room.label.split("-")
    assert adjective.isalpha() and animal.isalpha() and 0 <= int(number) < 100
    assert not room.is_private


def test_new_private_room_makes_creator_a_member(client, ann):
    client.post("/new/", {"is_private": "on"})
    room = Room.objects.get()
    assert room.is_private and room.can_view(ann)
    assert client.get(f"/{room.label}/").status_code == 200


def test_new_room_needs_post(client, ann):
    assert client.get("/new/").status_code == 405


def test_private_room_is_404_for_non_members_everywhere(client, ann, bob):
    room = Room.objects.create(label="secret", is_private=True, created_by=bob)
    room.invite(bob)
    room.post(bob, "the plan", "p1")
    assert client.get("/secret/").status_code == 404
    assert client.get("/secret/messages").status_code == 404
    assert client.post("/secret/invite/", {"handle": "ann"}).status_code == 404
    home = client.get("/")
    assert b"secret" not in home.content
    # The 404 looks exactly like a room that does not exist.
    assert client.get("/secret/messages").json() == client.get("/nothing-here/messages").json()


def test_creator_invites_by_handle(client, ann, bob):
    room = Room.objects.create(label="secret", is_private=True, created_by=ann)
    room.invite(ann)
    response = client.post("/secret/invite/", {"handle": "@BOB"})
    assert response.status_code == 302
    membership = room.memberships.get(user=bob)
    assert membership.invited_by == ann
    client.force_login(bob)
    assert client.get("/secret/").status_code == 200


def test_invite_unknown_handle_says_so(client, ann):
    room = Room.objects.create(label="secret", is_private=True, created_by=ann)
    room.invite(ann)
    response = client.post("/secret/invite/", {"handle": "ghost"}, follow=True)
    assert "No user with the handle &#x27;ghost&#x27;." in response.content.decode()
    assert room.memberships.count() == 1


def test_only_the_creator_invites(client, ann, bob):
    room = Room.objects.create(label="secret", is_private=True, created_by=bob)
    room.invite(bob)
    room.invite(ann, invited_by=bob)
    carol = User.objects.create_user("carol")
    assert client.post("/secret/invite/", {"handle": "carol"}).status_code == 403
    assert not room.memberships.filter(user=carol).exists()


def test_room_page_renders_last_50_oldest_first(client, ann):
    room = Room.objects.create(label="busy")
    seed(room, ann, 60)
    config = page_config(client.get("/busy/"))
    assert [m["text"] for m in config["messages"]] == [f"m{i}" for i in range(10, 60)]
    assert config["has_more"] is True


def test_room_page_escapes_message_text_in_json_script(client, ann):
    room = Room.objects.create(label="xss")
    room.post(ann, "</script><script>alert(1)</script>", "x1")
    content = client.get("/xss/").content.decode()
    assert "</script><script>alert(1)" not in content
    assert "\\u003C/script\\u003E\\u003Cscript\\u003Ealert(1)" in content


class TestHistory:
    @pytest.fixture
    def room(self, ann):
        room = Room.objects.create(label="hist")
        seed(room, ann, 30)
        return room

    def ids(self, room):
        return list(Message.objects.filter(room=room).order_by("id").values_list("id", flat=True))

    def test_before_and_limit(self, client, room):
        ids = self.ids(room)
        data = client.get(f"/hist/messages?before={ids[20]}&limit=5").json()
        assert [m["id"] for m in data["messages"]] == ids[15:20]
        assert data["has_older"] is True
        assert data["messages"][0] == {
            "type": "message",
            "id": ids[15],
            "room": "hist",
            "handle": "ann",
            "text": "m15",
            "ts": data["messages"][0]["ts"],
            "client_id": "c15",
        }

    def test_reaching_the_start(self, client, room):
        ids = self.ids(room)
        data = client.get(f"/hist/messages?before={ids[3]}&limit=5").json()
        assert [m["id"] for m in data["messages"]] == ids[:3]
        assert data["has_older"] is False

    def test_without_before_gives_latest(self, client, room):
        data = client.get("/hist/messages?limit=2").json()
        assert [m["text"] for m in data["messages"]] == ["m28", "m29"]

    @pytest.mark.parametrize(
        "query",
        ["limit=0", "limit=201", "limit=abc", "before=x", "before=0", "before=-5", "limit=1.5"],
    )
    def test_bad_params_are_400_json(self, client, room, query):
        response = client.get(f"/hist/messages?{query}")
        assert response.status_code == 400
        body = json.loads(response.content)
        assert body["error"] == "invalid" and body["detail"]

    def test_limit_200_is_allowed(self, client, room):
        assert client.get("/hist/messages?limit=200").status_code == 200

    def test_unknown_room_is_404_json(self, client, ann):
        response = client.get("/nope/messages")
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
        assert not Room.objects.filter(label="nope").exists()

    def test_anonymous_is_sent_to_login(self, room):
        from django.test import Client

        assert Client().get("/hist/messages").status_code == 302
