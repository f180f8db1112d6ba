"""Full-text search (chat.search, /search/): stemming, filters, privacy, hostile queries, the rate limit.

Runs on both stacks: PostgreSQL's tsvector + GIN, and SQLite's FTS5 on the embedded default.
"""

from datetime import datetime, timedelta
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from accounts.models import User
from chat.models import Message, Room
from chat.search import SearchError, SearchRateLimited, parse, search
from tests.chat_helpers import ann, bob  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_rate_counts(settings):
    """This test's search counts only: a fresh key prefix in the "search" cache (Redis on the PostgreSQL stack)."""
    settings.CACHES = {**settings.CACHES, "search": {**settings.CACHES["search"], "KEY_PREFIX": uuid4().hex}}


@pytest.fixture
def general(ann):
    return Room.objects.create(label="general", created_by=ann)


_count = 0


def say(room: Room, user: User, text: str, when: datetime | None = None) -> Message:
    """A message stored directly (Room.post would rate-limit a burst), optionally back-dated."""
    global _count
    _count += 1
    message = Message.objects.create(room=room, user=user, text=text, client_id=f"c{_count}")
    if when is not None:
        Message.objects.filter(pk=message.pk).update(created_at=when)
    return message


def texts(user: User, query: str) -> list[str]:
    return [r.message.text for r in search(user, query).results]


def test_a_deleted_message_is_no_result_and_an_edit_is_found_by_its_new_text(ann, general):
    from chat.edits import delete_message, edit_message

    gone = say(general, ann, "the quarterly numbers are wrong")
    kept = say(general, ann, "the quarterly plan")
    delete_message(general, ann, gone.pk)
    edit_message(general, ann, kept.pk, "the quarterly roadmap")
    assert texts(ann, "quarterly") == ["the quarterly roadmap"]
    assert texts(ann, "plan") == []


def test_a_direct_message_is_found_by_its_two_people_only(ann, bob):
    from chat import dm

    carol = User.objects.create_user("carol")
    room, _ = dm.start(ann, bob)
    say(room, ann, "the surprise party is on friday")
    assert texts(ann, "surprise") == texts(bob, "surprise") == ["the surprise party is on friday"]
    assert texts(carol, "surprise") == []
    with pytest.raises(SearchError, match="no room"):  # the same answer as for a room that does not exist
        search(carol, f"surprise in:#{room.label}")


def test_stemmed_words_match(ann, general):
    say(general, ann, "The builds failed twice")
    say(general, ann, "nothing to see here")
    assert texts(ann, "build fail") == ["The builds failed twice"]
    assert texts(ann, "building failing") == ["The builds failed twice"]


def test_web_search_syntax_phrases_or_and_exclusion(ann, general):
    say(general, ann, "red apples are sweet")
    say(general, ann, "sweet red cherries")
    say(general, ann, "green pears")
    assert texts(ann, '"red apples"') == ["red apples are sweet"]
    assert sorted(texts(ann, "apples or pears")) == ["green pears", "red apples are sweet"]
    assert texts(ann, "sweet -apples") == ["sweet red cherries"]


def test_better_matches_rank_first(ann, general):
    say(general, ann, "database migration notes")
    say(general, ann, "the database database database is down")
    assert texts(ann, "database")[0] == "the database database database is down"


def test_snippets_highlight_matches_and_escape_the_rest(ann, general):
    say(general, ann, "the build <script>alert(1)</script> broke & nobody noticed")
    [result] = search(ann, "build").results
    assert "<mark>build</mark>" in result.snippet
    assert "<script>" not in result.snippet and "&lt;script&gt;" in result.snippet
    assert "&amp;" in result.snippet


def test_a_message_cannot_forge_highlight_marks(ann, general):
    say(general, ann, "look \x02forged\x03 marks <mark>here</mark>")
    [result] = search(ann, "marks").results
    assert "<mark>forged" not in result.snippet and "&lt;mark&gt;" in result.snippet


def test_in_filter(ann, general):
    other = Room.objects.create(label="random", created_by=ann)
    say(general, ann, "lunch plans")
    say(other, ann, "lunch elsewhere")
    assert texts(ann, "lunch in:#random") == ["lunch elsewhere"]
    assert texts(ann, "lunch in:general") == ["lunch plans"]


def test_from_filter(ann, bob, general):
    say(general, ann, "coffee time")
    say(general, bob, "coffee please")
    assert texts(ann, "coffee from:@bob") == ["coffee please"]
    assert texts(ann, "coffee from:ANN") == ["coffee time"]


def test_before_and_after_exclude_the_day_named(ann, general):
    day = timezone.make_aware(datetime(2026, 11, 20, 12))
    for offset in (-1, 0, 1):
        say(general, ann, f"standup day{offset + 1}", when=day + timedelta(days=offset))
    assert texts(ann, "standup before:2026-11-20") == ["standup day0"]
    assert texts(ann, "standup after:2026-11-20") == ["standup day2"]
    assert sorted(texts(ann, "standup after:2026-11-18 before:2026-11-21")) == ["standup day0", "standup day1"]


def test_filters_alone_list_the_newest_matching_messages(ann, bob, general):
    say(general, ann, "one")
    say(general, bob, "two")
    say(general, ann, "three")
    assert texts(ann, "from:@ann in:#general") == ["three", "one"]


def test_private_rooms_are_never_searched_by_non_members(ann, bob, general):
    secret = Room.objects.create_by(ann, "secret", is_private=True)
    say(secret, ann, "the launch code is swordfish")
    say(general, ann, "swordfish is a fish")
    assert texts(bob, "swordfish") == ["swordfish is a fish"]
    assert texts(bob, "from:@ann") == ["swordfish is a fish"]
    with pytest.raises(SearchError, match="no room #secret you can see"):
        search(bob, "swordfish in:#secret")
    # The same answer as a room that does not exist: nothing leaks.
    with pytest.raises(SearchError, match="no room #nosuch you can see"):
        search(bob, "swordfish in:#nosuch")
    assert sorted(texts(ann, "swordfish")) == ["swordfish is a fish", "the launch code is swordfish"]
    secret.invite(bob)
    assert len(texts(bob, "swordfish")) == 2


def test_a_removed_member_no_longer_finds_the_room(ann, bob):
    secret = Room.objects.create_by(ann, "secret", is_private=True)
    secret.invite(bob)
    say(secret, ann, "quarterly numbers")
    assert texts(bob, "quarterly") == ["quarterly numbers"]
    secret.memberships.filter(user=bob).delete()
    assert texts(bob, "quarterly") == []


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced', 'a "b" "', "foo AND OR NOT", "-", "- -x", "(((", ")", "NEAR(a b)", "a* ^b col:x",
        "'; DROP TABLE chat_message; --", "1' OR '1'='1", "\\", "%_%", "🎉 party", "🎉",
        "\x00null", "!!! ???", "or", "the", "in:#", "from:@", "before:yesterday", "after:2026-13-45",
    ],
)  # fmt: skip
def test_hostile_queries_give_results_or_a_message(ann, general, query):
    say(general, ann, "party 🎉 tonight, DROP by")
    try:
        page = search(ann, query)
    except SearchError as error:
        assert str(error)
    else:
        assert isinstance(page.results, list)
    assert Message.objects.count() == 1


def test_a_10_kb_query_gets_a_clear_message(ann, general):
    with pytest.raises(SearchError, match="at most 256 characters"):
        search(ann, "word " * 2048)


def test_the_search_page_never_500s(client, ann, general):
    client.force_login(ann)
    say(general, ann, "party tonight")
    for query in ['"unbalanced', "x" * 10_240, "🎉", "in:#secret", "\x00", "' OR 1=1 --"]:
        response = client.get("/search/", {"q": query})
        assert response.status_code in (200, 400), (query, response.status_code)
    response = client.get("/search/", {"q": "parties"})
    assert response.status_code == 200
    assert b"<mark>party</mark>" in response.content
    assert b'href="/general/#message-' in response.content


def test_searches_are_rate_limited_per_user(client, ann, bob, general, settings):
    settings.SEARCH_RATE_LIMIT = 3
    for _ in range(3):
        search(ann, "anything")
    with pytest.raises(SearchRateLimited):
        search(ann, "anything")
    search(bob, "anything")  # another user's count is their own
    client.force_login(ann)
    assert client.get("/search/", {"q": "anything"}).status_code == 429


def test_search_requires_login(client):
    response = client.get("/search/", {"q": "x"})
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_parse_splits_words_from_filters():
    query = parse('deploy "it broke" in:#Ops from:@ann before:2026-11-23 -rollback')
    assert query.terms == ["deploy", '"it broke"', "-rollback"]
    assert (query.room, query.handle, str(query.before)) == ("ops", "ann", "2026-11-23")


@pytest.mark.django_db(transaction=True)
def test_index_survives_a_flush_and_is_rebuilt_after_migrate(ann):
    """The FTS5 triggers survive the test database's flush, and post_migrate restores them if a migration drops them."""
    room = Room.objects.create(label="general", created_by=ann)
    say(room, ann, "before anything")
    call_command("flush", verbosity=0, interactive=False)
    ann = User.objects.create_user("ann")
    room = Room.objects.create(label="general", created_by=ann)
    say(room, ann, "indexed after the flush")
    assert texts(ann, "indexed") == ["indexed after the flush"]
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER chat_message_fts_insert")
        call_command("migrate", verbosity=0, interactive=False)
        say(room, ann, "indexed after the migrate")
        assert texts(ann, "migrate") == ["indexed after the migrate"]


def test_common_words_walk_newest_first_and_rare_ones_use_the_index(ann, general):
    """Both of PostgreSQL's ways to the newest matches (chat.search._common) give the right results."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's FTS5 has one way")
    from chat.search import _common

    Message.objects.bulk_create(
        Message(room=general, user=ann, text=f"common chatter {i}", client_id=f"b{i}") for i in range(2000)
    )
    say(general, ann, "common and rare")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE chat_message")
    assert _common("common") and not _common("rare")
    assert texts(ann, "rare") == ["common and rare"]
    found = search(ann, "common chatter")
    assert len(found.results) == 20 and found.has_more
