"""Full-text search over the messages a user may see.

    parse("deploy failed in:#ops from:@ann after:2026-11-01")  -> SearchQuery parts
    search(user, text, page=1)                                  -> SearchPage

PostgreSQL: the generated `search_vector` column (english config: stemming, stop
words) and its GIN index, websearch_to_tsquery (quotes, `or`, `-word`; never a
syntax error), ts_rank, and ts_headline for the page shown only. SQLite (the
embedded default): the FTS5 table `chat_message_fts` (porter stemmer), bm25 and
snippet(); the same web-search syntax is translated to an FTS5 expression of
quoted strings, so nothing typed is ever FTS5 syntax.

Privacy: every search starts from `searchable(user)`, the messages of
Room.objects.visible_to(user). Filters only narrow it; a room named in `in:`
that the user may not see is answered exactly like a room that does not exist.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.contrib.postgres.search import (
    SearchHeadline,
    SearchQuery,
    SearchVectorField,
)
from django.core.cache import caches
from django.core.exceptions import EmptyResultSet
from django.db import DatabaseError, connection
from django.db.models import Expression, F, QuerySet, Value
from django.db.models.functions import Replace
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from accounts.models import User

from .models import Message, Room

logger = logging.getLogger(__name__)

PAGE_SIZE = 20
MAX_PAGE = 10
# PostgreSQL ranks the newest CANDIDATES matches (all of them, for all but the commonest words).
CANDIDATES = 1000
# A message read through the GIN index (a bitmap heap scan) costs about this many read walking ids
# (measured at 1M messages: 4,500 matches in 15 ms, 222,000 walked rows in 200 ms).
WALK_COST_RATIO = 4
MAX_QUERY_LENGTH = 256
SNIPPET_WORDS = 24
# Highlight marks put in by ts_headline / snippet(), replaced by <mark> after escaping.
START, STOP = "\x02", "\x03"
# PostgreSQL's parser reads "<b>" as an HTML tag and ts_headline drops it; the
# text goes to ts_headline with these in place of < and >, put back after escaping.
LT, GT = "\x0e", "\x0f"
MARKERS = (START, STOP, LT, GT)

TOKEN_RE = re.compile(r'"[^"]*"?|\S+')
FILTER_RE = re.compile(r"^(in|from|before|after):(.*)$", re.IGNORECASE)


class SearchError(ValueError):
    """A query Parley cannot run; str() is the message shown to the user."""


class SearchRateLimited(Exception):
    """More than SEARCH_RATE_LIMIT searches in SEARCH_RATE_WINDOW seconds."""


@dataclass
class Query:
    """A parsed search: the words to look for and the filters."""

    terms: list[str] = field(default_factory=list)  # web-search tokens: words, "phrases", -word, or
    room: str | None = None
    handle: str | None = None
    before: date | None = None
    after: date | None = None

    @property
    def text(self) -> str:
        return " ".join(self.terms)


@dataclass
class Result:
    message: Message
    snippet: SafeString


@dataclass
class SearchPage:
    query: Query
    results: list[Result]
    page: int
    has_more: bool


def _date(name: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise SearchError(f"{name}: takes a date like 2026-11-23.") from None


def parse(text: str) -> Query:
    """Split a query into words and filters: in:#room, from:@handle, before:/after:YYYY-MM-DD.

    Raises SearchError for a query too long or a filter with a bad value.
    """
    text = text.replace("\x00", "").strip()
    if len(text) > MAX_QUERY_LENGTH:
        raise SearchError(f"A search is at most {MAX_QUERY_LENGTH} characters.")
    query = Query()
    for token in TOKEN_RE.findall(text):
        match = FILTER_RE.match(token) if not token.startswith('"') else None
        if not match:
            query.terms.append(token)
            continue
        name, value = match[1].lower(), match[2]
        if name == "in":
            query.room = value.removeprefix("#").lower()
            if not query.room:
                raise SearchError("in: takes a room, like in:#general.")
        elif name == "from":
            query.handle = value.removeprefix("@")
            if not query.handle:
                raise SearchError("from: takes a handle, like from:@ann.")
        elif name == "before":
            query.before = _date(name, value)
        else:
            query.after = _date(name, value)
    return query


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def searchable(user: User) -> QuerySet[Message]:
    """Every message `user` may see, the one place search starts from.

    The rooms are read first and passed as a list: PostgreSQL checks each
    candidate message against a hashed array, where the subquery cost a join
    per message (a third of the time of a search for a common word).
    """
    rooms = list(Room.objects.visible_to(user).order_by().values_list("pk", flat=True))
    return Message.objects.filter(room_id__in=rooms)


def filtered(user: User, query: Query) -> QuerySet[Message]:
    """searchable(user) narrowed by the query's filters. `after:` and `before:` exclude the day named."""
    messages = searchable(user)
    if query.room is not None:
        try:
            room = Room.objects.find(query.room, user)
        except Room.DoesNotExist:  # private and not a member, or no such room: the same answer
            raise SearchError(f"There is no room #{query.room[:60]} you can see.") from None
        messages = messages.filter(room=room)
    if query.handle is not None:
        author = User.objects.filter(username__iexact=query.handle).first()
        if author is None:
            raise SearchError(f"There is no user @{query.handle[:30]}.")
        messages = messages.filter(user=author)
    if query.after is not None:
        messages = messages.filter(created_at__gte=_start_of(query.after + timedelta(days=1)))
    if query.before is not None:
        messages = messages.filter(created_at__lt=_start_of(query.before))
    return messages


def highlight(marked: str, original: str) -> SafeString:
    """HTML of a snippet: everything escaped, then the highlight marks made <mark> elements.

    A message that itself contains a marker character gets a plain snippet
    rather than a forged <mark>.
    """
    if any(marker in original for marker in MARKERS):
        return plain_snippet(original)
    html = escape(marked).replace(START, "<mark>").replace(STOP, "</mark>")
    return mark_safe(html.replace(LT, "&lt;").replace(GT, "&gt;"))


def plain_snippet(text: str) -> SafeString:
    words = text.split()
    short = " ".join(words[:SNIPPET_WORDS]) + (" …" if len(words) > SNIPPET_WORDS else "")
    return mark_safe(escape(short))


class SearchVectorColumn(Expression):
    """chat_message.search_vector: maintained by PostgreSQL (migration 0003), unknown to the model."""

    output_field = SearchVectorField()

    def as_sql(self, compiler, connection):
        alias = compiler.query.get_initial_alias()
        return f"{compiler.quote_name(alias)}.search_vector", []


def _common(text: str) -> bool:
    """Whether walking messages newest first finds CANDIDATES matches of `text` sooner than the index.

    The walk reads about CANDIDATES / share rows, the index (a bitmap scan)
    every match, each about WALK_COST_RATIO times a walked row. The share is
    PostgreSQL's own estimate (its statistics of the column's lexemes); its
    planner makes this choice too, but prices a walked row's `@@` too low, and
    chose the walk for a word in 0.45% of 1M messages: 200 ms instead of 15.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = 'chat_message'::regclass")
        total = cursor.fetchone()[0]
        cursor.cursor.execute(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM chat_message"
            " WHERE search_vector @@ websearch_to_tsquery('english'::regconfig, %s)",
            [text],
            prepare=False,
        )
        matches = cursor.fetchone()[0][0]["Plan"]["Plan Rows"]
    return total > 0 and WALK_COST_RATIO * matches * matches > CANDIDATES * total


def _postgres(messages: QuerySet[Message], query: Query, offset: int) -> list[Result]:
    """Rank the newest CANDIDATES matches, then headline only the page shown.

    Ranking every match of a common word (a third of a million messages at 1M)
    is what makes full-text search slow. The newest matches of a rare word
    come from the GIN index; those of a common word from walking messages
    newest first until enough match (_common() decides; README, Search). The
    walk is by id, which the (room, id) index also serves for in:, except
    under before:, where walking by id would first pass every later message:
    the created_at index starts at the date. `id + 0` is an order no index
    has, which leaves the planner the index scan only.
    """
    tsquery = SearchQuery(query.text, config="english", search_type="websearch")
    vector = SearchVectorColumn()
    if not _common(query.text):
        newest = (F("id") + 0).desc()
    else:
        newest = F("created_at" if query.before is not None else "id").desc()
    candidates = messages.alias(vector=vector).filter(vector=tsquery).order_by(newest).values("id", v=vector)
    try:
        inner, params = candidates[:CANDIDATES].query.sql_with_params()
    except EmptyResultSet:  # no room to search in
        return []
    with connection.cursor() as cursor:
        # Never a prepared statement (psycopg prepares a query after 5 runs, and
        # PostgreSQL may then keep one generic plan): the best plan for a rare
        # word (the index) is a scan of the whole table for a common one.
        cursor.cursor.execute(
            f"SELECT c.id FROM ({inner}) c"
            " ORDER BY ts_rank(c.v, websearch_to_tsquery('english'::regconfig, %s)) DESC, c.id DESC"
            " LIMIT %s OFFSET %s",
            [*params, query.text, PAGE_SIZE + 1, offset],
            prepare=False,
        )
        ranked = [pk for (pk,) in cursor.fetchall()]
    headline = SearchHeadline(
        Replace(Replace("text", Value("<"), Value(LT)), Value(">"), Value(GT)), tsquery,
        config="english", start_sel=START, stop_sel=STOP,
        max_words=SNIPPET_WORDS, min_words=SNIPPET_WORDS // 2, max_fragments=2, fragment_delimiter=" … ",
    )  # fmt: skip
    found = Message.objects.select_related("room", "user").annotate(headline=headline).in_bulk(ranked)
    return [Result(found[pk], highlight(found[pk].headline, found[pk].text)) for pk in ranked if pk in found]


def fts5_expression(terms: list[str]) -> str:
    """The web-search tokens as an FTS5 expression of quoted strings: "a" "b" OR "c" NOT "d".

    Raises SearchError when only excluded words remain (FTS5's NOT needs something to subtract from).
    """
    positive: list[str] = []
    negative: list[str] = []
    pending_or = False
    for token in terms:
        if token.lower() == "or" and positive:
            pending_or = True
            continue
        excluded = token.startswith("-") and len(token) > 1
        word = token[1:] if excluded else token
        word = word.strip('"').replace('"', "")
        if not re.search(r"\w", word):
            continue
        quoted = '"' + word + '"'
        if excluded:
            negative.append(quoted)
        elif pending_or:
            positive.append("OR " + quoted)
        else:
            positive.append(("AND " if positive else "") + quoted)
        pending_or = False
    if not positive:
        raise SearchError("Add a word to look for (a leading - leaves a word out).")
    return " ".join(positive) + "".join(f" NOT {n}" for n in negative)


def _sqlite(messages: QuerySet[Message], terms: list[str], offset: int) -> list[Result]:
    expression = fts5_expression(terms)
    try:
        subquery, params = messages.values("pk").query.sql_with_params()
    except EmptyResultSet:  # no room to search in
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rowid, snippet(chat_message_fts, 0, %s, %s, ' … ', %s) FROM chat_message_fts"
            f" WHERE chat_message_fts MATCH %s AND rowid IN ({subquery})"
            " ORDER BY bm25(chat_message_fts), rowid DESC LIMIT %s OFFSET %s",
            [START, STOP, SNIPPET_WORDS, expression, *params, PAGE_SIZE + 1, offset],
        )
        rows = cursor.fetchall()
    found = Message.objects.select_related("room", "user").in_bulk([pk for pk, _ in rows])
    return [Result(found[pk], highlight(marked, found[pk].text)) for pk, marked in rows if pk in found]


def check_rate(user: User) -> None:
    """Count one search; raise SearchRateLimited past SEARCH_RATE_LIMIT in the current window.

    A fixed window in the "search" cache (Redis when REDIS_URL is set, so the
    count is shared by every web process).
    """
    window = settings.SEARCH_RATE_WINDOW
    key = f"search-rate:{user.pk}:{int(timezone.now().timestamp() // window)}"
    cache = caches["search"]
    cache.add(key, 0, timeout=int(window) + 1)
    if cache.incr(key) > settings.SEARCH_RATE_LIMIT:
        raise SearchRateLimited


def search(user: User, text: str, page: int = 1) -> SearchPage:
    """The page-th PAGE_SIZE results of `text` among the messages `user` may see, best first.

    With filters but no words: the newest messages that pass the filters.
    Raises SearchError with a message for the user, SearchRateLimited past the limit.
    """
    check_rate(user)
    query = parse(text)
    if query == Query():
        raise SearchError("Type something to search for.")
    if not 1 <= page <= MAX_PAGE:
        raise SearchError(f"Results go up to page {MAX_PAGE}; narrow the search instead.")
    offset = (page - 1) * PAGE_SIZE
    messages = filtered(user, query)
    if not query.terms:
        newest = list(messages.select_related("room", "user").order_by("-id")[offset : offset + PAGE_SIZE + 1])
        results = [Result(m, plain_snippet(m.text)) for m in newest]
    else:
        try:
            if connection.vendor == "postgresql":
                results = _postgres(messages, query, offset)
            else:
                results = _sqlite(messages, query.terms, offset)
        except DatabaseError:
            # Not expected from either path (the query is built from quoted
            # strings); a message rather than a 500 if some input still trips it.
            logger.exception("event=search_failed user=%s", user.pk)
            raise SearchError("Parley could not run this search; try simpler words.") from None
    return SearchPage(query, results[:PAGE_SIZE], page, len(results) > PAGE_SIZE)
