"""Message search: chat.search.search() vs a naive ILIKE '%term%' over the same rows, and the sidebar's cost.

    .venv/bin/python bench/search.py            # what `make bench` runs: 1,000,000 messages in 50 rooms
    .venv/bin/python bench/search.py --smoke    # a few seconds, for `make test`

N messages in 50 public rooms from 200 posters, generated in PostgreSQL with
generate_series: 4 to 17 words each, drawn with a Zipf-like skew from a
vocabulary of everyday chat words in four inflections (deploy, deploys,
deployed, deploying...) and a long tail of rarer tokens, so common words are in
a large share of messages and rare ones in a handful, as in real chat.

Then, in one process, for each of 20 typical queries (common and rare words,
two-word, phrase, exclusion, and each filter): chat.search.search() for a user
who sees every room (the whole first page: ranking, snippets, the messages'
rows), against the naive search a first version would write: every word as
`text ILIKE '%word%'` with the same filters, newest 21 first. Each query runs
--rounds times (3) after one warm-up run; p50/p95 over all runs.

sidebar_ms: chat.sidebar.rooms_for(user) for a user in all 50 rooms, nothing
read in any (median of the rounds).

PostgreSQL of the benchmark's own, fsync off (reads only are measured). Targets:
search_p95_ms < 50, ilike_p95_ms / search_p95_ms >= 20, sidebar_ms < 20.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project root, not bench/, first on sys.path

import os
import shutil
import tempfile
import time

from bench.common import (
    arg_parser,
    emit,
    median,
    percentile,
    print_table,
    servers,
    setup_parley,
)

ROOMS = 50
POSTERS = 200
BASE_WORDS = ["deploy", "build", "test", "merge", "review", "release", "fix", "crash", "report", "update", "change", "check", "start", "finish", "plan", "meet", "call", "ship", "launch", "load", "push", "pull", "commit", "design", "draft", "print", "order", "book", "cook", "paint", "clean", "move", "open", "close", "lock", "help", "ask", "answer", "work", "play", "walk", "talk", "jump", "rain", "snow", "travel", "visit", "watch", "read", "write", "learn", "teach", "join", "leave", "wait", "need", "want", "like", "love", "hate", "hope", "miss", "share", "send", "post", "search", "sort", "count", "price", "cost", "pay", "sign", "stream", "record", "migrate", "backup", "restore", "monitor", "alert", "page", "rotate", "scale", "cache", "index", "query", "parse", "render"]
TAIL = 3000  # rarer tokens: names, codes, jargon

GENERATE = """
INSERT INTO chat_message (room_id, user_id, text, client_id, created_at)
SELECT %(first_room)s + (g %% %(rooms)s),
       %(first_user)s + (g %% %(posters)s),
       array_to_string(ARRAY(
           SELECT (%(words)s::text[])[1 + floor(power(random(), 2.5) * %(nwords)s)::int]
           FROM generate_series(1, 4 + g %% 14)
       ), ' '),
       'bench-' || g,
       timestamptz '2026-01-01' + g * interval '20 seconds'
FROM generate_series(1, %(count)s) AS g
"""

# 20 typical queries: what people type into a chat's search box.
QUERIES = [
    "deploy", "crash", "deployed build", "fixing crash report", "release", "migrate backup", '"build failed"',
    "restore -backup", "alert or page", "rotating keys", "zq0042", "zq1977 zq0007", "zq2500", "cache index",
    "deploy in:#room-7", "crash from:@poster-3", "release after:2026-06-01", "review before:2026-02-01",
    "jump search", "rain snow travel",
]  # fmt: skip


def vocabulary() -> list[str]:
    """Inflected common words first (the skew makes the first ones the most frequent), then the tail."""
    forms = []
    for word in BASE_WORDS:
        stem = word.removesuffix("e")
        forms += [word, word + "s", stem + "ed", stem + "ing"]
    return forms + [f"zq{i:04}" for i in range(TAIL)]


def generate(count: int):
    from django.db import connection

    from accounts.models import User
    from chat.models import Membership, Room

    users = User.objects.bulk_create(User(username=f"poster-{i}") for i in range(POSTERS))
    rooms = Room.objects.bulk_create(Room(label=f"room-{i}") for i in range(ROOMS))
    reader = User.objects.create_user("reader")
    Membership.objects.bulk_create(Membership(room=room, user=reader) for room in rooms)
    words = vocabulary()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(GENERATE, {
            "first_room": min(r.pk for r in rooms), "rooms": ROOMS, "first_user": min(u.pk for u in users),
            "posters": POSTERS, "words": words, "nwords": len(words), "count": count,
        })  # fmt: skip
        cursor.execute("VACUUM ANALYZE chat_message")
    return reader


def ilike_lookup():
    """`text__ilike`: PostgreSQL's ILIKE as written by hand (Django's icontains is UPPER() LIKE UPPER())."""
    from django.db.models import Lookup, TextField

    class ILike(Lookup):
        lookup_name = "ilike"

        def as_sql(self, compiler, connection):
            lhs, lhs_params = self.process_lhs(compiler, connection)
            rhs, rhs_params = self.process_rhs(compiler, connection)
            return f"{lhs} ILIKE {rhs}", [*lhs_params, *rhs_params]

    TextField.register_lookup(ILike)


def naive(user, text: str) -> list[int]:
    """What a first version would do: each word ILIKE '%word%', the same filters and visibility, newest first."""
    from chat.search import filtered, parse

    query = parse(text)
    messages = filtered(user, query)
    for term in query.terms:
        if term.lower() == "or":
            continue
        if term.startswith("-"):
            messages = messages.exclude(text__ilike=f"%{term[1:]}%")
        else:
            messages = messages.filter(text__ilike=f"%{term.strip(chr(34))}%")
    return [m.pk for m in messages.select_related("room", "user").order_by("-id")[:21]]


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - started) * 1000, result


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count, rounds = (20_000, 1) if args.smoke else (args.messages, args.rounds)

    work = Path(tempfile.mkdtemp(prefix="parley-bench-search-"))
    try:
        with servers(durable=False) as (redis, postgres):
            setup_parley(redis.url, postgres.create_database("bench_search"), work / "media")
            from django.conf import settings

            from chat.search import search

            ilike_lookup()
            settings.SEARCH_RATE_LIMIT = 10**9  # the benchmark measures search, not the limit
            started = time.perf_counter()
            reader = generate(count)
            print(f"{count:,} messages in {ROOMS} rooms generated and indexed in {time.perf_counter() - started:.1f} s; "
                  f"{len(QUERIES)} queries x {rounds} rounds after a warm-up; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
            rows, parley_ms, ilike_ms = [], [], []
            for text in QUERIES:
                search(reader, text)  # warm-up: plans, caches
                naive(reader, text)
                ours, theirs = [], []
                for _ in range(rounds):
                    ms, page = timed(search, reader, text)
                    ours.append(ms)
                    theirs.append(timed(naive, reader, text)[0])
                parley_ms += ours
                ilike_ms += theirs
                rows.append((text, len(page.results), median(ours), median(theirs), median(theirs) / median(ours)))
            from chat.sidebar import rooms_for

            rooms_for(reader)  # warm-up, as for the queries
            sidebar_ms = round(median([timed(rooms_for, reader)[0] for _ in range(max(rounds, 3))]), 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_table(f"Search, {count:,} messages ({ROOMS} rooms), median ms", ["query", "results", "Parley", "ILIKE", "x faster"], rows)
    result = {
        "search_p50_ms": round(percentile(parley_ms, 50), 2),
        "search_p95_ms": round(percentile(parley_ms, 95), 2),
        "ilike_p50_ms": round(percentile(ilike_ms, 50), 2),
        "ilike_p95_ms": round(percentile(ilike_ms, 95), 2),
        "sidebar_ms": sidebar_ms,
        "messages": count,
        "rounds": rounds,
    }
    print(f"p95: Parley {result['search_p95_ms']} ms (target < 50), ILIKE {result['ilike_p95_ms']} ms: "
          f"{result['ilike_p95_ms'] / result['search_p95_ms']:.0f}x (target >= 20); sidebar {sidebar_ms} ms (target < 20)")  # fmt: skip
    emit(result)


if __name__ == "__main__":
    main()
