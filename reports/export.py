"""Writing a room's history to a file, in parts, resumably.

write_export() streams the job's messages in id order, a batch at a time
(keyset pagination: `id > last`), so memory stays bounded however large the
room. Batches are not gathered in memory: each part is pulled from them as
storage.save() reads it (Part), and ends at the first batch boundary past
REPORTS_EXPORT_PART_BYTES. After each part the job's checkpoint (parts saved,
last id, rows) is stored; a run that starts again after its worker died
continues after the checkpoint. The parts are finally joined into one file.
"""

import base64
import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from html import escape as html_escape

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connections
from django.db.models import CharField, F, Func, QuerySet, TextField, Value
from django.db.models.functions import Cast, Concat, NullIf
from django.template.loader import render_to_string
from django.utils import timezone

from accounts import avatars
from chat.models import Message, Room

from .models import Job
from .signals import finish_unless_deleted

logger = logging.getLogger(__name__)

# Passes over the room an export makes, each after a message it had written was deleted.
MAX_PASSES = 3

BATCH_SIZE = 2000
# Columns of every format, in this order.
COLUMNS = ("id", "created_at", "user", "display_name", "text")
# (id, created_at, user_id, handle, display_name, text)
Row = tuple[int, datetime, int, str, str, str]
# Bytes of the file, the rows they end, and the id of the last of those rows;
# last id None: the bytes end inside a batch, and a part cannot end there.
Piece = tuple[bytes, int, int | None]
Progress = Callable[[int, int | None, str], None]


def job_messages(job: Job) -> QuerySet:
    """The messages a job covers: its room, its date range, up to its snapshot id."""
    # A deleted message is a tombstone with no text: not part of any export.
    return job_range(job).filter(deleted_at__isnull=True)


def job_range(job: Job) -> QuerySet:
    """The job's room, date range and snapshot, deleted messages included."""
    messages = Message.objects.filter(room_id=job.room_id, id__lte=job.last_message_id)
    if job.since is not None:
        messages = messages.filter(created_at__gte=job.since)
    if job.until is not None:
        messages = messages.filter(created_at__lt=job.until)
    return messages


def room_changes(job: Job) -> int:
    """The room's change number now: a pass over its messages starts from it."""
    return Room.objects.filter(pk=job.room_id).values_list("change_seq", flat=True).get()


def batches(messages: QuerySet, after_id: int, size: int = BATCH_SIZE) -> Iterator[list[Row]]:
    """Rows in id order, `size` at a time, each batch one indexed query (room, id)."""
    columns = ("id", "created_at", "user_id", "user__username", "user__display_name", "text")
    while True:
        batch = list(messages.filter(id__gt=after_id).order_by("id").values_list(*columns)[:size])
        if not batch:
            return
        yield batch
        after_id = batch[-1][0]


def timestamp(at: datetime) -> str:
    """One fixed form in every format (and the same as PostgreSQL's COPY path below)."""
    return at.isoformat(timespec="microseconds")


class Writer:
    """Formats batches of rows; head() and foot() frame the file."""

    extension = ""

    def __init__(self, job: Job) -> None:
        self.job = job

    def head(self) -> str:
        return ""

    def rows(self, rows: list[Row]) -> str:
        raise NotImplementedError

    def foot(self) -> str:
        return ""

    def batches(self, messages: QuerySet, after_id: int) -> Iterator[Piece]:
        """The rows of every message after `after_id`, formatted, a batch at a time."""
        for rows in batches(messages, after_id):
            yield self.rows(rows).encode(), len(rows), rows[-1][0]


class JsonLinesWriter(Writer):
    """One JSON object a line; on PostgreSQL the server writes the lines (JSON_LINE)."""

    extension = "jsonl"

    def rows(self, rows: list[Row]) -> str:
        dumps = json.dumps
        return "".join(
            dumps(
                {"id": id_, "created_at": timestamp(at), "user": handle, "display_name": name, "text": text},
                ensure_ascii=False,
            )
            + "\n"
            for id_, at, _, handle, name, text in rows
        )

    def batches(self, messages: QuerySet, after_id: int) -> Iterator[Piece]:
        if connections[messages.db].vendor != "postgresql":
            return super().batches(messages, after_id)
        return copy_batches(messages, after_id, (JSON_LINE,), JSON_COPY)


class CsvWriter(Writer):
    """CSV as RFC 4180 has it (quotes, commas and newlines in a field are quoted), LF line ends.

    On PostgreSQL, COPY formats the rows in the server (as psql's \\copy does):
    the same bytes as the csv module writes, several times faster.
    """

    extension = "csv"

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")

    def _take(self) -> str:
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text

    def head(self) -> str:
        self.writer.writerow(COLUMNS)
        return self._take()

    def rows(self, rows: list[Row]) -> str:
        self.writer.writerows(
            (id_, timestamp(at), inert_cell(handle), inert_cell(name), inert_cell(text))
            for id_, at, _, handle, name, text in rows
        )
        return self._take()

    def batches(self, messages: QuerySet, after_id: int) -> Iterator[Piece]:
        if connections[messages.db].vendor != "postgresql":
            return super().batches(messages, after_id)
        return copy_batches(messages, after_id, ("id", ISO_TIMESTAMP, *COPY_CSV_CELLS), "FORMAT csv")


# A spreadsheet runs a cell that starts with one of these as a formula
# (`=HYPERLINK(...)` leaks data when clicked): OWASP's "CSV injection" advice is
# to make such a cell plain text with a leading single quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: str) -> str:
    """`value` as a spreadsheet shows it as text, never runs it (see FORMULA_STARTS)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


class InertCell(Func):
    """inert_cell() in SQL, so COPY writes the same bytes as CsvWriter.rows."""

    # The column once, so its parameters (NullIf's "") are passed once; chr(9), chr(13): tab, CR.
    template = r"regexp_replace(%(expressions)s, '^([-=+@' || chr(9) || chr(13) || '])', '''\1')"
    output_field = TextField()


def copy_batches(messages: QuerySet, after_id: int, columns: tuple, options: str) -> Iterator[Piece]:
    """The rows after `after_id` as PostgreSQL's COPY writes them, a batch per statement.

    COPY sends one message per row (the protocol says so: "CopyData messages
    (always one per row)"): they are handed on COPY_PIECE_BYTES at a time, the
    batch's count is COPY's row count, and its last id the first number of its
    last row (every format starts a row with the message's id). A batch holds
    about a part's worth of rows, up to COPY_BATCH_SIZE (parts end between
    batches: they stay near REPORTS_EXPORT_PART_BYTES, and so do checkpoints).
    """
    connection = connections[messages.db]
    batch, rows_seen, bytes_seen = min(COPY_FIRST_BATCH, COPY_BATCH_SIZE), 0, 0
    while True:
        rows = messages.filter(id__gt=after_id).order_by("id").values_list(*columns)[:batch]
        sql, params = rows.query.get_compiler(messages.db).as_sql()
        with connection.cursor() as cursor, cursor.cursor.copy(f"COPY ({sql}) TO STDOUT ({options})", params) as copy:
            blocks, size, row = [], 0, b""
            for row in copy:
                blocks.append(row)
                size += len(row)
                if size >= COPY_PIECE_BYTES:
                    bytes_seen += size
                    yield b"".join(blocks), 0, None
                    blocks, size = [], 0
            count = cursor.cursor.rowcount
        if not count:
            return
        after_id = int(FIRST_NUMBER.match(bytes(row[:40])).group(1))
        rows_seen, bytes_seen = rows_seen + count, bytes_seen + size
        batch = max(1, min(COPY_BATCH_SIZE, part_size() * rows_seen // bytes_seen))
        yield b"".join(blocks), count, after_id


COPY_FIRST_BATCH = 1000
COPY_BATCH_SIZE = 20_000
COPY_PIECE_BYTES = 256 * 1024
FIRST_NUMBER = re.compile(rb"\D*(\d+)")
# COPY quotes a CSV field as the csv module's QUOTE_MINIMAL does (one holding a
# comma, a quote, CR or LF; quotes doubled), and an empty string too, as "" (to
# tell it from NULL): empty texts go out as NULL, which COPY writes as nothing, as csv does.
COPY_NULLABLE = tuple(NullIf(name, Value(""), output_field=TextField()) for name in ("user__display_name", "text"))
# The CSV's handle, display name and text columns, each made inert (InertCell).
COPY_CSV_CELLS = (InertCell("user__username"), *(InertCell(column) for column in COPY_NULLABLE))


def _json(field: str) -> Func:
    """A string as JSON: PostgreSQL escapes exactly what json.dumps(ensure_ascii=False) does."""
    return Func(F(field), template="to_json(%(expressions)s)::text", output_field=TextField())


# PostgreSQL's rendering of timestamp() (the connection's time zone is UTC).
ISO_TIMESTAMP = Func(
    F("created_at"), Value('YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), function="to_char", output_field=CharField()
)
# JsonLinesWriter's line, built by PostgreSQL. COPY writes it as it is with CSV
# quote and delimiter characters that JSON never holds unescaped (control
# characters), and no raw newline either: nothing to quote.
JSON_LINE = Concat(
    Value('{"id": '), Cast("id", TextField()), Value(', "created_at": "'), ISO_TIMESTAMP,
    Value('", "user": '), _json("user__username"), Value(', "display_name": '), _json("user__display_name"),
    Value(', "text": '), _json("text"), Value("}"), output_field=TextField(),
)  # fmt: skip
JSON_COPY = "FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01'"


class HtmlWriter(Writer):
    """One self-contained page: styles and avatars inline, every message escaped.

    Each poster's avatar appears once, as a CSS class holding a data: image, not
    once per message.
    """

    extension = "html"

    def head(self) -> str:
        poster_ids = job_messages(self.job).order_by().values_list("user_id", flat=True).distinct()
        return render_to_string(
            "reports/export_head.html",
            {
                "job": self.job,
                "room": self.job.room,
                "generated_at": timezone.now(),
                "avatars": avatar_data_uris(poster_ids),
            },
        )

    def rows(self, rows: list[Row]) -> str:
        # html.escape is all django.utils.html.escape does, less its lazy-string
        # wrapper (see README.md, Room exports); the shown minute is cut from the
        # ISO timestamp, not formatted again with strftime.
        lines = []
        for id_, at, uid, handle, name, text in rows:
            iso = timestamp(at)
            handle = html_escape(handle)
            lines.append(
                f'<article id="m{id_}"><i class="av a{uid}"></i><div><header><b>{html_escape(name) if name else handle}'
                f'</b> <span>@{handle}</span> <time datetime="{iso}">{iso[:10]} {iso[11:16]}</time></header>'
                f"<p>{html_escape(text)}</p></div></article>\n"
            )
        return "".join(lines)

    def foot(self) -> str:
        return render_to_string("reports/export_foot.html", {"job": self.job})


WRITERS = {Job.Format.JSONL: JsonLinesWriter, Job.Format.CSV: CsvWriter, Job.Format.HTML: HtmlWriter}
# An export inlines each poster's 32 px thumbnail; anything bigger is not one.
MAX_INLINE_AVATAR_BYTES = 32 * 1024


def avatar_data_uris(user_ids) -> Iterator[tuple[int, str]]:
    """(user id, data: URI) of each user's small avatar, or of their initials placeholder."""
    users = get_user_model().objects.filter(pk__in=user_ids).only("pk", "username", "display_name", "avatar_digest")
    for user in users.iterator(chunk_size=500):
        data = None
        if user.avatar_digest:
            name = avatars.thumbnail_name(user.pk, user.avatar_digest, "32.png")
            try:
                with default_storage.open(name, "rb") as fh:
                    data = fh.read(MAX_INLINE_AVATAR_BYTES + 1)
            except OSError:
                logger.warning("event=avatar_missing user=%s name=%s", user.pk, name)
        if data and len(data) <= MAX_INLINE_AVATAR_BYTES:
            yield user.pk, f"data:image/png;base64,{base64.b64encode(data).decode()}"
        else:
            svg = avatars.placeholder_svg(user).encode()
            yield user.pk, f"data:image/svg+xml;base64,{base64.b64encode(svg).decode()}"


class PartsReader(io.RawIOBase):
    """The saved parts, read one after another as one stream (for storage.save)."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.current = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self.current is None:
                if not self.names:
                    return 0
                self.current = default_storage.open(self.names.pop(0), "rb")
            data = self.current.read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
        super().close()


def part_size() -> int:
    return settings.REPORTS_EXPORT_PART_BYTES


class Part(io.RawIOBase):
    """The next part of the file, pulled from the export's pieces as storage.save() reads it.

    Only the piece being copied is in memory, never the whole part. The part
    ends at the first batch boundary once it holds `limit` bytes, or when the
    pieces run out (then `ended`: it is the last part). `rows` and `last_id`
    are what the checkpoint records; `on_batch(rows)` is told of each batch.
    """

    def __init__(self, pieces: Iterator[Piece], limit: int, on_batch: Callable[[int], None]) -> None:
        super().__init__()
        self.pieces = pieces
        self.limit = limit
        self.on_batch = on_batch
        self.size = 0
        self.rows = 0
        self.last_id: int | None = None
        self.full = False
        self.ended = False
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            if self.full or self.ended:
                return 0
            try:
                data, rows, last_id = next(self.pieces)
            except StopIteration:
                self.ended = True
                return 0
            self.pending = memoryview(data)
            self.size += len(data)
            if last_id is not None:
                self.rows += rows
                self.last_id = last_id
                self.full = self.size >= self.limit
                self.on_batch(rows)
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count


def write_export(job: Job, progress: Progress) -> None:
    """Write (or go on writing) the job's file; the job ends with `file` set.

    `progress(done, total, note)` is called after every batch; it is where the
    task runner stops a cancelled job. A message deleted after it was written
    sends the export back to the start (finish_export()), up to MAX_PASSES
    passes in all: the file never carries a deleted message's text.
    """
    messages = job_messages(job)
    for _ in range(MAX_PASSES):
        writer = WRITERS[job.format](job)
        write_parts(job, writer, messages, progress)
        progress(job.rows_done, job.rows_done, "joining the parts")
        if finish_export(job, writer):
            return
        logger.info("event=export_restarted job=%s reason=message_deleted rows=%d", job.pk, job.rows_done)
        start_over(job)
    raise DeletedWhileRead(f"Messages of the room kept being deleted while it was exported ({MAX_PASSES} tries).")


def write_parts(job: Job, writer: "Writer", messages: QuerySet, progress: Progress) -> None:
    """Write the parts after the job's checkpoint, saving a checkpoint after each."""
    if job.parts_complete:
        return
    if not job.parts:  # a pass begins: deletions from here on may reach its parts
        job.changes_from = room_changes(job)
        Job.objects.filter(pk=job.pk).update(changes_from=job.changes_from)
    total = messages.count()
    note_suffix = f" (resumed after message {job.last_id})" if job.parts else ""
    # A part saved after the last checkpoint was cut short, or is left from a pass
    # that started over (start_over()): each is written again below.
    number = job.parts + 1
    while default_storage.exists(job.part_name(number)):
        default_storage.delete(job.part_name(number))
        number += 1
    done = job.rows_done

    def on_batch(rows: int) -> None:
        nonlocal done
        done += rows
        progress(done, max(total, done), f"{done:,} of {max(total, done):,} messages{note_suffix}")

    def pieces() -> Iterator[Piece]:
        if not job.parts:
            yield writer.head().encode(), 0, None
        yield from writer.batches(messages, after_id=job.last_id)
        job.rows_done = done  # the footer counts them
        yield writer.foot().encode(), 0, None

    stream = pieces()
    try:
        while True:
            part = Part(stream, part_size(), on_batch)
            save_part(job, part)
            if part.ended:
                break
    finally:
        stream.close()  # a batch cut short (an error, a cancel) ends its query here, not at GC


def start_over(job: Job) -> None:
    """Forget the parts written: a message they hold was deleted. Their files go
    after the checkpoint is reset; a worker dying in between leaves them to
    write_parts(), which removes what follows the checkpoint."""
    if not Job.objects.filter(pk=job.pk, parts=job.parts).update(
        parts=0, last_id=0, rows_done=0, bytes_written=0, parts_complete=False
    ):
        raise Superseded(f"job {job.pk} has more than {job.parts} parts")
    for number in range(1, job.parts + 1):
        default_storage.delete(job.part_name(number))
    job.parts = job.last_id = job.rows_done = job.bytes_written = 0
    job.parts_complete = False


class DeletedWhileRead(Exception):
    """Messages of the room were deleted during every pass of an export or insights job."""


class Superseded(Exception):
    """Another attempt of this job has moved past this one (its worker stalled past
    the runner's lease): this attempt stops, and leaves every file to the other."""


def save_part(job: Job, part: Part) -> None:
    """Save the next part as it is written, then record the checkpoint that includes it."""
    number = job.parts + 1
    rows_before = job.rows_done  # read first: writing the footer sets job.rows_done to the total
    with io.BufferedReader(part, 1 << 16) as stream:  # full reads: S3's multipart upload needs them
        saved = default_storage.save(job.part_name(number), File(stream))
    if saved != job.part_name(number):  # the name was taken: by another attempt
        default_storage.delete(saved)
        raise Superseded(f"part {number} of job {job.pk} exists")
    last_id = job.last_id if part.last_id is None else part.last_id
    rows_done = rows_before + part.rows
    bytes_written = job.bytes_written + part.size
    moved = Job.objects.filter(pk=job.pk, parts=job.parts).update(
        parts=number, last_id=last_id, rows_done=rows_done, bytes_written=bytes_written, parts_complete=part.ended
    )
    if not moved:
        raise Superseded(f"job {job.pk} has more than {job.parts} parts")
    job.parts, job.last_id, job.rows_done = number, last_id, rows_done
    job.bytes_written = bytes_written
    job.parts_complete = part.ended


def finish_export(job: Job, writer: Writer) -> bool:
    """Join the parts into the final file, and offer it until it expires; False, and
    nothing offered, if a message in the parts was deleted meanwhile."""
    name = f"{job.storage_dir}/{job.room.label}-{job.created_at:%Y%m%d-%H%M}.{writer.extension}"
    default_storage.delete(name)  # a join cut short by a dead worker
    with io.BufferedReader(PartsReader([job.part_name(n) for n in range(1, job.parts + 1)]), 1 << 20) as stream:
        saved = default_storage.save(name, File(stream))
    now = timezone.now()
    written = job_range(job).filter(id__lte=job.last_id)
    if not finish_unless_deleted(
        job, written, job.changes_from, file=saved, finished_at=now, expires_at=now + settings.REPORTS_EXPORT_TTL
    ):  # fmt: skip
        default_storage.delete(saved)
        return False
    for number in range(1, job.parts + 1):
        default_storage.delete(job.part_name(number))
    logger.info("event=export_finished job=%s rows=%d bytes=%d", job.pk, job.rows_done, job.bytes_written)
    return True
