"""Edits, deletes, reactions and threads: every frame and refusal on the room socket, and their sync.

Changes are numbered per room (Room.change_seq); these tests hold the socket to
the same promises as messages: each change once and in order, through lost and
crossing broadcasts, heartbeats and a Redis outage.
"""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from accounts.models import User
from chat import edits
from chat.changes import changes_after
from chat.consumers import change_event
from chat.models import Membership, Message, MessageVersion, Reaction, Room, RoomHidden
from notifications.models import Notification
from reports import jobs
from reports.export import job_messages
from reports.models import Job
from tests.chat_helpers import (  # noqa: F401 (fixtures: ann, bob, their cookies, lobby, fresh_channel_layer)
    ann,
    ann_cookie,
    bob,
    bob_cookie,
    fresh_channel_layer,
    join,
    lobby,
    next_of,
    send,
    session_cookie,
)
from tests.run_tasks import run_queue
from tests.test_chat_consumer import frames_until_quiet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_channel_layer")]

db = database_sync_to_async


def message(text="hello", client_id="c1", **extra):
    return {"type": "message", "text": text, "client_id": client_id, **extra}


async def posted(room: Room, user: User, text: str = "hello", client_id: str = "p1") -> Message:
    return (await db(room.post)(user, text, client_id))[0]


async def error_of(socket) -> dict:
    return await next_of(socket, "error")


async def change_numbered(socket, seq: int) -> dict:
    """The change frame `seq`, skipping earlier ones."""
    while (change := await next_of(socket, "change"))["seq"] < seq:
        pass
    assert change["seq"] == seq
    return change


def changes_of(frames: list[dict]) -> list[int]:
    return [f["seq"] for f in frames if f["type"] == "change"]


# --- edit -------------------------------------------------------------------------------


async def test_edit_reaches_everyone_marked_edited_and_keeps_the_old_text(lobby, ann, ann_cookie, bob_cookie):
    original = await posted(lobby, ann, "helo")
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await send(a, {"type": "edit", "id": original.pk, "text": "hello"})
    for socket in (a, b):
        change = await next_of(socket, "change")
        assert change["seq"] == 1
        assert change["message"]["id"] == original.pk
        assert change["message"]["text"] == "hello"
        assert change["message"]["edited"].endswith("Z")
        assert change["message"]["seq"] == 1
    assert await db(lambda: list(MessageVersion.objects.values_list("text", flat=True)))() == ["helo"]
    assert (await db(Message.objects.get)(pk=original.pk)).text == "hello"
    await a.disconnect()
    await b.disconnect()


@pytest.mark.parametrize(
    "author, frame, code",
    [
        ("bob", {"text": "mine now"}, "forbidden"),
        ("ann", {"id": 999_999, "text": "x"}, "not_found"),
        ("ann", {"text": " \n "}, "empty"),
        ("ann", {"text": "x" * 4001}, "too_long"),
        ("ann", {"text": "hello"}, "unchanged"),
    ],
)
async def test_edit_refusals_name_the_message_and_keep_the_socket(lobby, ann, bob, ann_cookie, author, frame, code):
    target = await posted(lobby, {"ann": ann, "bob": bob}[author], "hello", "b1")
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "edit", "id": target.pk, **frame})
    error = await error_of(a)
    assert error["code"] == code
    assert error["id"] == frame.get("id", target.pk)
    assert (await db(Message.objects.get)(pk=target.pk)).text == "hello"
    await send(a, message("still here"))
    assert (await next_of(a, "message"))["text"] == "still here"
    await a.disconnect()


async def test_a_message_of_another_room_is_not_found(lobby, ann, ann_cookie):
    elsewhere = await db(Room.objects.create)(label="elsewhere", created_by=ann)
    there = await posted(elsewhere, ann)
    a, _ = await join("lobby", ann_cookie)
    for frame in (
        {"type": "edit", "id": there.pk, "text": "x"},
        {"type": "delete", "id": there.pk},
        {"type": "react", "id": there.pk, "emoji": "👍"},
        {"type": "thread", "id": there.pk},
        {"type": "versions", "id": there.pk},
    ):
        await send(a, frame)
        assert (await error_of(a))["code"] == "not_found", frame
    await a.disconnect()


async def test_edit_window_setting_refuses_late_edits(settings, lobby, ann, ann_cookie):
    settings.CHAT_EDIT_WINDOW = 0
    mine = await posted(lobby, ann)
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "edit", "id": mine.pk, "text": "too late"})
    assert (await error_of(a))["code"] == "edit_window"
    await a.disconnect()


async def test_edits_count_against_the_message_rate_limit(lobby, ann, ann_cookie):
    mine = await posted(lobby, ann)
    for n in range(9):
        await posted(lobby, ann, f"more {n}", f"more{n}")
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "edit", "id": mine.pk, "text": "one too many"})
    assert (await error_of(a))["code"] == "rate_limited"
    await a.disconnect()


def test_an_edit_that_adds_a_mention_notifies_the_new_person_once(lobby, ann, bob):
    carol = User.objects.create_user("carol")
    original, _ = lobby.post(ann, "hi @bob", "m1")
    run_queue(["notifications"], 10)
    edits.edit_message(lobby, ann, original.pk, "hi @bob and @carol")
    run_queue(["notifications"], 10)
    edits.edit_message(lobby, ann, original.pk, "hi @carol and @bob!")
    run_queue(["notifications"], 10)
    assert sorted(Notification.objects.values_list("user__username", flat=True)) == ["bob", "carol"]
    assert Notification.objects.filter(user=carol).count() == 1


# --- delete -----------------------------------------------------------------------------


async def test_delete_leaves_a_tombstone_and_removes_the_text_from_the_database(lobby, ann, bob, ann_cookie, bob_cookie):
    mine = await posted(lobby, ann, "secret plan")
    await db(edits.edit_message)(lobby, ann, mine.pk, "secret plan v2")
    await db(edits.toggle_reaction)(lobby, bob, mine.pk, "👍")
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await send(a, {"type": "delete", "id": mine.pk})
    for socket in (a, b):
        change = await next_of(socket, "change")
        assert change["message"]["deleted"] is True
        assert change["message"]["text"] == ""
        assert "reactions" not in change["message"]
    stored = await db(Message.objects.get)(pk=mine.pk)
    assert stored.text == "" and stored.deleted_at is not None
    assert not await db(MessageVersion.objects.exists)()
    assert not await db(Reaction.objects.exists)()

    def anywhere() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM chat_message WHERE text LIKE %s", ["%secret plan%"])
            found = cursor.fetchone()[0]
            cursor.execute("SELECT count(*) FROM chat_messageversion WHERE text LIKE %s", ["%secret plan%"])
            return found + cursor.fetchone()[0]

    assert await db(anywhere)() == 0
    for frame in ({"type": "edit", "id": mine.pk, "text": "back"}, {"type": "react", "id": mine.pk, "emoji": "😀"},
                  {"type": "delete", "id": mine.pk}):  # fmt: skip
        await send(a, frame)
        assert (await error_of(a))["code"] == "deleted"
    await a.disconnect()
    await b.disconnect()


async def test_only_the_author_or_a_moderator_may_delete(lobby, ann, bob, ann_cookie, bob_cookie):
    """ann made the lobby: she moderates it. bob may delete his own messages only; staff any."""
    anns = await posted(lobby, ann, "ann's", "a1")
    bobs = await posted(lobby, bob, "bob's", "b1")
    bobs_too = await posted(lobby, bob, "bob's too", "b2")
    b, _ = await join("lobby", bob_cookie)
    await send(b, {"type": "delete", "id": anns.pk})
    assert await error_of(b) == {"type": "error", "code": "forbidden", "detail": "You can only delete your own messages.",
                                 "id": anns.pk}  # fmt: skip
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "delete", "id": bobs.pk})
    assert (await next_of(b, "change"))["message"]["id"] == bobs.pk
    staff = await db(User.objects.create_user)("root", is_staff=True)
    s, _ = await join("lobby", await db(session_cookie)(staff))
    await send(s, {"type": "delete", "id": bobs_too.pk})
    assert (await next_of(b, "change"))["message"]["id"] == bobs_too.pk
    for socket in (a, b, s):
        await socket.disconnect()


def test_deleting_removes_its_notifications(lobby, ann, bob):
    mention, _ = lobby.post(ann, "@bob look", "m1")
    run_queue(["notifications"], 10)
    assert Notification.objects.filter(user=bob, message=mention).exists()
    edits.delete_message(lobby, ann, mention.pk)
    assert not Notification.objects.filter(message=mention).exists()


def test_a_room_one_can_no_longer_see_takes_no_change(ann, bob):
    room = Room.objects.create(label="secret", is_private=True, created_by=ann)
    room.invite(ann)
    room.invite(bob, invited_by=ann)
    bobs, _ = room.post(bob, "mine", "b1")
    Membership.objects.filter(room=room, user=bob).delete()
    for change in (
        lambda: edits.edit_message(room, bob, bobs.pk, "changed"),
        lambda: edits.delete_message(room, bob, bobs.pk),
        lambda: edits.toggle_reaction(room, bob, bobs.pk, "👍"),
    ):
        with pytest.raises(RoomHidden):
            change()
    bobs.refresh_from_db()
    assert bobs.text == "mine" and bobs.deleted_at is None and bobs.change_seq == 0


def test_a_deleted_message_leaves_exports_made_before_and_after(settings, lobby, ann):
    kept, _ = lobby.post(ann, "kept", "k1")
    gone, _ = lobby.post(ann, "to be deleted", "g1")
    before, _ = jobs.start_export(ann, lobby, "jsonl")
    run_queue(["compute"], 5)
    before.refresh_from_db()
    assert before.finished_at is not None and before.file
    edits.delete_message(lobby, ann, gone.pk)
    before.refresh_from_db()
    assert before.status == Job.Status.EXPIRED and not before.file
    after, _ = jobs.start_export(ann, lobby, "jsonl")
    run_queue(["compute"], 5)
    after.refresh_from_db()
    assert list(job_messages(after).values_list("id", flat=True)) == [kept.pk]
    with after.file.open("rb") as file:
        data = file.read().decode()
    assert "kept" in data and "to be deleted" not in data


# --- reactions --------------------------------------------------------------------------


async def test_reactions_toggle_live_with_who_reacted(lobby, ann, bob, ann_cookie, bob_cookie):
    target = await posted(lobby, ann)
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await send(b, {"type": "react", "id": target.pk, "emoji": "👍"})
    assert (await next_of(a, "change"))["message"]["reactions"] == [["👍", ["bob"]]]
    await send(a, {"type": "react", "id": target.pk, "emoji": "👍"})
    await send(a, {"type": "react", "id": target.pk, "emoji": "🇫🇷"})
    await next_of(b, "change")  # bob's own
    await next_of(b, "change")
    assert (await next_of(b, "change"))["message"]["reactions"] == [["👍", ["bob", "ann"]], ["🇫🇷", ["ann"]]]
    await send(b, {"type": "react", "id": target.pk, "emoji": "👍"})  # again: taken back
    assert (await change_numbered(a, 4))["message"]["reactions"] == [["👍", ["ann"]], ["🇫🇷", ["ann"]]]
    assert await db(Reaction.objects.count)() == 2
    await a.disconnect()
    await b.disconnect()


@pytest.mark.parametrize("emoji", ["👍", "👍🏽", "👩‍💻", "❤️", "🇫🇷", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"])
def test_single_emoji_are_emoji(emoji):
    assert edits.is_emoji(emoji)


@pytest.mark.parametrize("text", ["a", "ok", "1", "👍👍", "👍 ", "<b>", "🇫", ":)", "\u200d"])
def test_text_and_two_emoji_are_not(text):
    assert not edits.is_emoji(text)


@pytest.mark.parametrize("emoji, code", [("lol", "bad_emoji"), ("👍👎", "bad_emoji"), ("", "invalid"), ("x" * 65, "invalid")])
async def test_react_refuses_what_is_not_one_emoji(lobby, ann, ann_cookie, emoji, code):
    target = await posted(lobby, ann)
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "react", "id": target.pk, "emoji": emoji})
    error = await error_of(a)
    assert (error["code"], error["id"]) == (code, target.pk)
    await a.disconnect()


def test_a_message_takes_at_most_20_different_emoji(lobby, ann):
    target, _ = lobby.post(ann, "react to me", "r1")
    for n in range(edits.MAX_EMOJI_PER_MESSAGE):
        edits.toggle_reaction(lobby, ann, target.pk, chr(0x1F600 + n))
    with pytest.raises(edits.Refused) as refused:
        edits.toggle_reaction(lobby, ann, target.pk, "👍")
    assert refused.value.code == "too_many_reactions"


# --- threads ------------------------------------------------------------------------------


async def test_a_reply_bumps_its_parent_and_the_thread_shows_it(lobby, ann, bob, ann_cookie, bob_cookie):
    parent = await posted(lobby, ann, "thread starter")
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    await send(b, message("a reply", "r1", parent=parent.pk))
    await send(b, message("to the room too", "r2", parent=parent.pk, to_room=True))
    frames = await frames_until_quiet(a)
    replies = [f for f in frames if f["type"] == "message"]
    assert [r["parent"] for r in replies] == [parent.pk, parent.pk]
    assert "to_room" not in replies[0] and replies[1]["to_room"] is True
    counts = [f for f in frames if f["type"] == "change"]
    assert [c["message"]["replies"] for c in counts] == [1, 2]
    assert counts[1]["message"]["last_reply"] == replies[1]["ts"]
    await send(a, {"type": "thread", "id": parent.pk})
    thread = await next_of(a, "thread")
    assert thread["parent"]["id"] == parent.pk and thread["parent"]["replies"] == 2
    assert [r["text"] for r in thread["replies"]] == ["a reply", "to the room too"]
    # Replies are edited, reacted to and deleted like messages; a deleted one no longer counts.
    await send(b, {"type": "edit", "id": replies[0]["id"], "text": "a better reply"})
    assert (await next_of(a, "change"))["message"]["text"] == "a better reply"
    await send(a, {"type": "react", "id": replies[0]["id"], "emoji": "🎉"})
    assert (await change_numbered(b, 4))["message"]["reactions"] == [["🎉", ["ann"]]]
    await send(b, {"type": "delete", "id": replies[1]["id"]})
    deleted, recount = await change_numbered(a, 5), await change_numbered(a, 6)
    assert deleted["message"]["deleted"] and recount["message"]["id"] == parent.pk
    assert recount["message"]["replies"] == 1 and recount["message"]["last_reply"] == replies[0]["ts"]
    assert recount["seq"] == deleted["seq"] + 1
    await a.disconnect()
    await b.disconnect()


@pytest.mark.parametrize("which", ["reply", "deleted", "unknown"])
async def test_a_reply_needs_a_live_top_level_parent(lobby, ann, ann_cookie, which):
    parent = await posted(lobby, ann, "parent", "p")
    reply = await db(lobby.post)(ann, "reply", "r", parent.pk)
    target = {"reply": reply[0].pk, "deleted": parent.pk, "unknown": 999_999}[which]
    if which == "deleted":
        await db(edits.delete_message)(lobby, ann, parent.pk)
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("nested", "n1", parent=target))
    assert await error_of(a) == {"type": "error", "code": "not_found", "client_id": "n1",
                                 "detail": "No such thread in this room: its message is unknown, deleted or a reply."}  # fmt: skip
    assert not await db(Message.objects.filter(client_id="n1").exists)()
    if which == "reply":
        await send(a, {"type": "thread", "id": target})
        assert (await error_of(a))["code"] == "not_a_thread"
    await a.disconnect()


# --- versions -------------------------------------------------------------------------------


async def test_old_versions_for_the_author_and_moderators_only(lobby, ann, bob, ann_cookie, bob_cookie):
    bobs = await posted(lobby, bob, "first", "b1")
    await db(edits.edit_message)(lobby, bob, bobs.pk, "second")
    await db(edits.edit_message)(lobby, bob, bobs.pk, "third")
    carol = await db(User.objects.create_user)("carol")
    for cookie in (bob_cookie, ann_cookie):  # the author; the room's creator
        socket, _ = await join("lobby", cookie)
        await send(socket, {"type": "versions", "id": bobs.pk})
        answer = await next_of(socket, "versions")
        assert answer["id"] == bobs.pk and [v["text"] for v in answer["versions"]] == ["first", "second"]
        await socket.disconnect()
    c, _ = await join("lobby", await db(session_cookie)(carol))
    await send(c, {"type": "versions", "id": bobs.pk})
    assert (await error_of(c))["code"] == "forbidden"
    await c.disconnect()


# --- sync of changes: once, in order, whatever the channel layer does ----------------------


async def test_sync_with_changes_after_sends_each_changed_message_once_in_change_order(lobby, ann, bob, bob_cookie):
    one, two = await posted(lobby, ann, "one", "1"), await posted(lobby, ann, "two", "2")
    await db(edits.edit_message)(lobby, ann, one.pk, "one!")  # seq 1
    await db(edits.toggle_reaction)(lobby, bob, two.pk, "👍")  # seq 2
    await db(edits.edit_message)(lobby, ann, one.pk, "one!!")  # seq 3
    b, _ = await join("lobby", bob_cookie)
    await send(b, {"type": "sync", "after": two.pk, "changes_after": 0})
    frames = [f for f in await frames_until_quiet(b) if f["type"] in {"change", "synced", "message"}]
    assert [(f["seq"], f["message"]["id"]) for f in frames[:-1]] == [(2, two.pk), (3, one.pk)]
    assert frames[-1] == {"type": "synced", "last_id": two.pk, "more": False, "last_seq": 3}
    await send(b, {"type": "sync", "after": two.pk, "changes_after": 3})
    frames = [f for f in await frames_until_quiet(b) if f["type"] in {"change", "synced", "message"}]
    assert frames == [{"type": "synced", "last_id": two.pk, "more": False, "last_seq": 3}]
    await send(b, {"type": "sync", "after": two.pk, "changes_after": 99})  # never beyond the room's newest change
    assert (await next_of(b, "synced"))["last_seq"] == 3
    await b.disconnect()


async def test_a_lost_change_broadcast_is_read_from_the_database(lobby, ann, ann_cookie, bob_cookie):
    edited, reacted = await posted(lobby, ann, "one", "1"), await posted(lobby, ann, "two", "2")
    b, _ = await join("lobby", bob_cookie)
    # Stored, but its broadcast never left.
    await db(edits.edit_message)(lobby, ann, edited.pk, "edited unseen")
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "react", "id": reacted.pk, "emoji": "👀"})
    changes = [f for f in await frames_until_quiet(b) if f["type"] == "change"]
    assert [(c["seq"], c["message"]["id"]) for c in changes] == [(1, edited.pk), (2, reacted.pk)]
    assert changes[0]["message"]["text"] == "edited unseen"
    assert changes[1]["message"]["reactions"] == [["👀", ["ann"]]]
    await a.disconnect()
    await b.disconnect()


async def test_several_changes_of_one_message_missed_come_as_its_final_state_once(lobby, ann, ann_cookie, bob_cookie):
    target = await posted(lobby, ann)
    b, _ = await join("lobby", bob_cookie)
    await db(edits.edit_message)(lobby, ann, target.pk, "edited unseen")  # never broadcast
    a, _ = await join("lobby", ann_cookie)
    await send(a, {"type": "react", "id": target.pk, "emoji": "👀"})
    changes = [f for f in await frames_until_quiet(b) if f["type"] == "change"]
    assert [c["seq"] for c in changes] == [2]  # seq 1 is superseded: the final state, once
    assert changes[0]["message"]["text"] == "edited unseen"
    assert changes[0]["message"]["reactions"] == [["👀", ["ann"]]]
    await a.disconnect()
    await b.disconnect()


async def test_crossing_change_broadcasts_are_sent_in_change_order_once(lobby, ann, bob_cookie):
    one, two = await posted(lobby, ann, "one", "1"), await posted(lobby, ann, "two", "2")
    b, _ = await join("lobby", bob_cookie)
    first = change_event((await db(edits.edit_message)(lobby, ann, one.pk, "one!"))[0])
    second = change_event((await db(edits.edit_message)(lobby, ann, two.pk, "two!"))[0])
    layer = get_channel_layer()
    await layer.group_send(lobby.group_name, second)
    await layer.group_send(lobby.group_name, first)
    frames = await frames_until_quiet(b)
    assert changes_of(frames) == [1, 2]
    await b.disconnect()


async def test_a_change_that_overtakes_its_message_comes_after_it(lobby, ann, bob_cookie):
    b, _ = await join("lobby", bob_cookie)
    fresh = await posted(lobby, ann, "typo", "t")  # its broadcast is late
    change = change_event((await db(edits.edit_message)(lobby, ann, fresh.pk, "fixed"))[0])
    await get_channel_layer().group_send(lobby.group_name, change)
    frames = [f for f in await frames_until_quiet(b) if f["type"] in {"message", "change"}]
    assert frames[0]["type"] == "message" and frames[0]["id"] == fresh.pk
    assert frames[0]["text"] == "fixed"  # read now: the change is in it
    await b.disconnect()


async def test_heartbeat_sends_a_change_whose_broadcast_never_came(settings, lobby, ann, bob_cookie):
    settings.CHAT_PRESENCE_TTL = 0.6  # a beat every 0.15 to 0.2 s
    target = await posted(lobby, ann)
    b, _ = await join("lobby", bob_cookie)
    await db(edits.delete_message)(lobby, ann, target.pk)
    change = await next_of(b, "change", timeout=3)
    assert change["message"]["deleted"] is True
    assert changes_of(await frames_until_quiet(b)) == []
    await b.disconnect()


async def test_redis_outage_loses_no_change(settings, own_redis, lobby, ann, ann_cookie, bob_cookie):
    layer = {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [own_redis.url]}}
    settings.CHANNEL_LAYERS = {"default": layer, "tasks": layer}
    settings.CHAT_PRESENCE_TTL = 0.6
    target = await posted(lobby, ann)
    a, _ = await join("lobby", ann_cookie)
    b, _ = await join("lobby", bob_cookie)
    own_redis.stop()
    await send(a, {"type": "edit", "id": target.pk, "text": "while redis is down"})
    assert (await next_of(a, "change"))["message"]["text"] == "while redis is down"
    assert (await next_of(b, "change", timeout=3))["seq"] == 1
    own_redis.start()
    await send(a, {"type": "react", "id": target.pk, "emoji": "👍"})
    assert (await next_of(a, "change", timeout=5))["seq"] == 2
    assert (await next_of(b, "change", timeout=5))["seq"] == 2
    for socket in (a, b):
        assert changes_of(await frames_until_quiet(socket)) == []
        await socket.disconnect()


def test_changes_after_gives_each_message_once_at_its_latest_change(lobby, ann):
    one, _ = lobby.post(ann, "one", "1")
    two, _ = lobby.post(ann, "two", "2")
    edits.edit_message(lobby, ann, one.pk, "a")
    edits.edit_message(lobby, ann, two.pk, "b")
    edits.edit_message(lobby, ann, one.pk, "c")
    frames, more = changes_after(lobby, 0)
    assert [(f["seq"], f["message"]["text"]) for f in frames] == [(2, "b"), (3, "c")] and not more
    assert changes_after(lobby, 3) == ([], False)


async def test_message_frames_of_a_plain_message_carry_no_new_keys(lobby, ann_cookie):
    """The fan-out's frames are as small as before edits existed."""
    a, _ = await join("lobby", ann_cookie)
    await send(a, message("plain"))
    assert set(await next_of(a, "message")) == {"type", "id", "room", "handle", "text", "ts", "client_id"}
    await a.disconnect()


async def test_change_frames_are_rate_limited_per_socket(lobby, ann, ann_cookie):
    target = await posted(lobby, ann)
    a, _ = await join("lobby", ann_cookie)
    for _ in range(11):
        await send(a, {"type": "thread", "id": target.pk})
    codes = []
    async with asyncio.timeout(5):
        while len(codes) < 11:
            frame = await a.receive_json_from(timeout=5)
            if frame["type"] in {"thread", "error"}:
                codes.append(frame.get("code", "ok"))
    assert codes == ["ok"] * 10 + ["rate_limited"]
    await a.disconnect()


def test_a_sync_page_of_changes_stays_within_its_byte_bound(lobby, ann):
    from chat.consumers import sync_for_socket
    from chat.protocol import SYNC_MAX_BYTES

    long = Message.objects.bulk_create(
        Message(room=lobby, user=ann, text=f"{n}" + "x" * 3990, client_id=f"l{n}") for n in range(300)
    )
    for message in long:
        edits.toggle_reaction(lobby, ann, message.pk, "👍")
    session = session_cookie(ann)
    page, more, last_id, changes, last_seq = sync_for_socket(session, lobby, ann, long[-1].pk, 0)
    assert page == [] and more and 0 < len(changes) < 300
    assert sum(len(text.encode()) for text in changes) <= SYNC_MAX_BYTES
    assert last_seq == len(changes)  # one change each, in order: the next sync goes on from here
    rest = sync_for_socket(session, lobby, ann, last_id, last_seq)
    assert rest[4] > last_seq


def test_a_mention_in_a_thread_reply_notifies(lobby, ann, bob):
    parent, _ = lobby.post(ann, "a thread", "t1")
    reply, _ = lobby.post(ann, "what do you think, @bob?", "t2", parent.pk)
    run_queue(["notifications"], 10)
    assert list(Notification.objects.values_list("user__username", "message_id")) == [("bob", reply.pk)]
