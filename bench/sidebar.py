"""The sidebar's unread counts for a user in 50 rooms holding 1,000,000 messages (PostgreSQL).

    .venv/bin/python bench/sidebar.py            # 1M messages in 50 rooms
    .venv/bin/python bench/sidebar.py --smoke    # 20k messages, for `make test`

Messages are generated in the database (generate_series), spread unevenly over
the rooms (the busiest holds about a tenth), and the user has joined all 50 at
varied read positions: caught up, a few behind, and never read at all (the
busiest among those: tens of thousands unread). Then, on warm caches,
`chat.sidebar.rooms_for(user)` (what every room page renders) is timed
--repeat times, next to the naive form it replaces: the same memberships with
an uncapped COUNT(*) of each room's messages after the read position. Timed
once right after the bulk load (only ANALYZEd: PostgreSQL then walks the
primary key), and then after the VACUUM that autovacuum gives an insert-mostly
table (the visibility map makes the capped count an index-only scan).
Last line JSON: sidebar_ms (p50, vacuumed), sidebar_p95_ms, sidebar_unvacuumed_ms,
naive_ms (p50), rooms, messages, load_avg.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # the project root, not bench/, first on sys.path

import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.common import arg_parser, emit, median, percentile, print_table, servers, setup_parley  # noqa: E402

ROOMS = 50


def generate(messages: int) -> tuple[object, int]:
    """The rooms, `messages` messages over them, and a user who joined all of them; (user, messages)."""
    from django.db import connection
    from django.db.models import Max

    from accounts.models import User
    from chat.models import Membership, Room

    author = User.objects.create_user("author")
    reader = User.objects.create_user("reader")
    rooms = Room.objects.bulk_create(Room(label=f"room-{n:02}", created_by=author) for n in range(ROOMS))
    first_room = rooms[0].pk
    with connection.cursor() as cursor:
        # Room k gets a share proportional to 1 / (k + 1) (Zipf-like): a few busy rooms, many quiet ones.
        cursor.execute(
            """
            INSERT INTO chat_message (room_id, user_id, text, client_id, created_at)
            SELECT %s + (floor(%s * power(random(), 3)))::int, %s, 'message ' || g, 'c' || g,
                   now() - make_interval(secs => %s - g)
            FROM generate_series(1, %s) AS g
            """,
            [first_room, ROOMS, author.pk, messages, messages],
        )
        cursor.execute("ANALYZE chat_message")
    newest = dict(Room.objects.filter(pk__in=[r.pk for r in rooms]).values_list("pk").annotate(m=Max("messages__id")))
    memberships = []
    for n, room in enumerate(rooms):
        top = newest.get(room.pk) or 0
        # A third caught up, a third a few behind, a third never read.
        position = top if n % 3 == 0 else max(top - 7, 0) if n % 3 == 1 else 0
        memberships.append(Membership(room=room, user=reader, last_read_id=position))
    Membership.objects.bulk_create(memberships)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE chat_membership")
    return reader, messages


def naive_counts(user) -> list[tuple[int, int]]:
    """The form the cap replaces: every unread message of every room counted."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.room_id, (SELECT COUNT(*) FROM chat_message x WHERE x.room_id = m.room_id"
            " AND x.id > m.last_read_id) FROM chat_membership m WHERE m.user_id = %s",
            [user.pk],
        )
        return cursor.fetchall()


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    messages = 20_000 if args.smoke else args.messages
    repeat = 10 if args.smoke else args.repeat
    with tempfile.TemporaryDirectory(prefix="parley-bench-sidebar-") as work, servers(durable=False) as (redis, pg):
        setup_parley(redis.url, pg.create_database("bench_sidebar"), Path(work) / "media")
        from chat import sidebar

        start = time.perf_counter()
        reader, total = generate(messages)
        made_s = time.perf_counter() - start
        bar = sidebar.rooms_for(reader)
        unread = sorted((e.unread for e in bar.rooms), reverse=True)
        biggest = max(count for _, count in naive_counts(reader))
        naive = timed(lambda: naive_counts(reader), max(3, repeat // 10))
        fresh = timed(lambda: sidebar.rooms_for(reader), max(3, repeat // 5))
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE chat_message")  # what autovacuum does to an insert-mostly table
        fast = timed(lambda: sidebar.rooms_for(reader), repeat)
    load = os.getloadavg()[0]
    print(f"{total:,} messages in {ROOMS} rooms generated in {made_s:.1f} s; the reader's largest backlog "
          f"{biggest:,} unread (shown as {sidebar.UNREAD_CAP}+); load average {load:.2f}")  # fmt: skip
    print_table(
        "Sidebar for a user in 50 rooms (ms)",
        ["form", "p50", "p95", "runs"],
        [["rooms_for (capped)", median(fast), percentile(fast, 95), len(fast)],
         ["rooms_for, before the first vacuum", median(fresh), percentile(fresh, 95), len(fresh)],
         ["naive COUNT(*)", median(naive), percentile(naive, 95), len(naive)]],
    )  # fmt: skip
    print(f"top unread counts: {unread[:5]}")
    emit({
        "sidebar_ms": round(median(fast), 2), "sidebar_p95_ms": round(percentile(fast, 95), 2),
        "sidebar_unvacuumed_ms": round(median(fresh), 2), "naive_ms": round(median(naive), 2), "rooms": ROOMS, "messages": total, "load_avg": round(load, 2),
    })  # fmt: skip


if __name__ == "__main__":
    main()
