"""Periodic schedules (tasks.schedules): ticks, missed ticks, DST, pause/resume, removal, the system check.

Time is what a worker's heartbeat passes to enqueue_due(now=...), so a night
or an outage is walked through in steps, as heartbeats would see it; the tasks
enqueued are real TaskRecords, run here as a worker runs them.
"""

import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.utils import timezone

from tasks import schedules
from tasks.models import Schedule, ScheduleTick, TaskRecord
from tasks.monitor import overview
from tasks.runner import SUCCESSFUL
from tests import sample_tasks
from tests.run_tasks import run_queue

pytestmark = pytest.mark.django_db(transaction=True)

LONDON = "Europe/London"


@pytest.fixture
def declare():
    """`@schedule` for this test only: the registry holds just the test's schedules meanwhile."""
    saved, saved_duplicates = dict(schedules.registry), list(schedules.duplicates)
    schedules.registry.clear()
    schedules.duplicates.clear()

    def declare(task=sample_tasks.noop, **options):
        return schedules.schedule(**options)(task)

    yield declare
    schedules.registry.clear()
    schedules.registry.update(saved)
    schedules.duplicates[:] = saved_duplicates


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def walk(start: datetime, end: datetime, step: timedelta) -> int:
    """Heartbeats from start to end, `step` apart; how many tasks they enqueued."""
    enqueued, now = 0, start
    while now <= end:
        enqueued += schedules.enqueue_due(now=now)
        now += step
    return enqueued


def ticks(name: str) -> list[datetime]:
    return list(ScheduleTick.objects.filter(schedule__name=name).order_by("at").values_list("at", flat=True))


def test_a_tick_enqueues_its_task_once_then_waits_for_the_next(declare):
    declare(every=60, name="minutely", args=(), kwargs={})
    t0 = at("2026-06-01T12:00:00")
    assert schedules.enqueue_due(now=t0 - timedelta(seconds=30)) == 0  # first seen: waits for its first tick
    assert schedules.enqueue_due(now=t0 + timedelta(seconds=1)) == 1
    assert schedules.enqueue_due(now=t0 + timedelta(seconds=3)) == 0  # the next heartbeat: already done
    assert ticks("minutely") == [t0]
    row = Schedule.objects.get(name="minutely")
    assert (row.last_tick, row.next_tick) == (t0, t0 + timedelta(minutes=1))
    assert TaskRecord.objects.filter(task_path="tests.sample_tasks.noop").count() == 1
    assert run_queue(["default"], limit=5) == 1
    assert TaskRecord.objects.get(pk=row.last_task_id).status == SUCCESSFUL


def test_missed_ticks_after_a_3_tick_outage_are_coalesced_into_one_run(declare):
    declare(every=60, name="minutely")
    t0 = at("2026-06-01T12:00:00")
    walk(t0 - timedelta(seconds=30), t0 + timedelta(seconds=1), timedelta(seconds=2))
    # Every worker is down for the next three ticks (12:01, 12:02, 12:03); one comes back at 12:03:20.
    back = t0 + timedelta(minutes=3, seconds=20)
    assert schedules.enqueue_due(now=back) == 1
    assert schedules.enqueue_due(now=back + timedelta(seconds=2)) == 0
    assert ticks("minutely") == [t0, t0 + timedelta(minutes=3)]
    assert ScheduleTick.objects.get(at=t0 + timedelta(minutes=3)).coalesced == 2  # 12:01 and 12:02 with it
    assert Schedule.objects.get(name="minutely").next_tick == t0 + timedelta(minutes=4)


def test_missed_each_runs_every_missed_tick_and_skip_runs_none(declare):
    declare(every=60, name="each", missed="each")
    declare(task=sample_tasks.add, every=60, name="skip", missed="skip", args=(1, 2))
    t0 = at("2026-06-01T12:00:00")
    walk(t0 - timedelta(seconds=30), t0 + timedelta(seconds=1), timedelta(seconds=2))
    back = t0 + timedelta(minutes=3, seconds=20)
    assert schedules.enqueue_due(now=back) == 3  # each: 12:01, 12:02, 12:03; skip: nothing
    assert ticks("each") == [t0 + timedelta(minutes=m) for m in range(4)]
    assert ticks("skip") == [t0]
    assert Schedule.objects.get(name="skip").next_tick == t0 + timedelta(minutes=4)
    # Back on time, skip runs its next tick again.
    assert walk(t0 + timedelta(minutes=4), t0 + timedelta(minutes=4, seconds=1), timedelta(seconds=1)) == 2
    assert ticks("skip") == [t0, t0 + timedelta(minutes=4)]
    assert TaskRecord.objects.filter(task_path="tests.sample_tasks.add", args=[1, 2]).count() == 2


def test_a_long_backlog_is_caught_up_a_bounded_number_of_ticks_per_heartbeat(declare):
    declare(every=1, name="seconds", missed="each")
    t0 = at("2026-06-01T12:00:00")
    schedules.enqueue_due(now=t0 - timedelta(seconds=1))
    assert schedules.enqueue_due(now=t0 + timedelta(seconds=50)) == schedules.TICKS_PER_BEAT
    assert schedules.enqueue_due(now=t0 + timedelta(seconds=50)) == schedules.TICKS_PER_BEAT
    assert schedules.enqueue_due(now=t0 + timedelta(seconds=50)) == 51 - 2 * schedules.TICKS_PER_BEAT
    assert ticks("seconds") == [t0 + timedelta(seconds=s) for s in range(51)]


def test_a_timetable_changed_in_code_applies_from_its_next_tick(declare):
    declare(every=60, name="minutely")
    t0 = at("2026-06-01T12:00:00")
    walk(t0 - timedelta(seconds=30), t0 + timedelta(seconds=1), timedelta(seconds=2))
    declare(every=3600, name="minutely")  # the next deploy: hourly now
    assert schedules.enqueue_due(now=t0 + timedelta(minutes=5)) == 0  # 12:01 to 12:05 were the old timetable's
    row = Schedule.objects.get(name="minutely")
    assert (row.spec, row.next_tick) == ("every 3600s", t0 + timedelta(hours=1))
    assert walk(t0 + timedelta(minutes=59), t0 + timedelta(hours=1, seconds=2), timedelta(seconds=2)) == 1


def test_during_a_rolling_deploy_older_workers_leave_a_newer_timetable_alone(declare):
    """This process loaded its code (every 60 s) before the process that wrote the row (every 3600 s) did."""
    declare(every=60, name="minutely")
    t0 = at("2026-06-01T12:00:00")
    Schedule.objects.create(name="minutely", spec="every 3600s", next_tick=t0 + timedelta(hours=1),
                            code_loaded_at=schedules.LOADED_AT + timedelta(seconds=1))  # fmt: skip
    assert walk(t0, t0 + timedelta(minutes=5), timedelta(seconds=10)) == 0
    row = Schedule.objects.get(name="minutely")
    assert (row.spec, row.next_tick) == ("every 3600s", t0 + timedelta(hours=1))
    # A row written by a process that loaded its code before this one is this one's to re-time.
    Schedule.objects.filter(pk=row.pk).update(code_loaded_at=schedules.LOADED_AT - timedelta(seconds=1))
    schedules.enqueue_due(now=t0 + timedelta(minutes=5, seconds=30))
    assert Schedule.objects.get(pk=row.pk).next_tick == t0 + timedelta(minutes=6)


@pytest.mark.parametrize(
    ("night", "local_run"),
    [
        # 29 March 2026: at 01:00 GMT clocks go to 02:00 BST, so 01:30 never happens: it runs at the jump.
        ("2026-03-28T22:00:00", "2026-03-29T01:00:00"),
        # 25 October 2026: at 02:00 BST clocks go back to 01:00 GMT, so 01:30 happens twice: it runs the first time.
        ("2026-10-24T22:00:00", "2026-10-25T00:30:00"),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_a_daily_0130_london_schedule_runs_once_on_a_dst_night(declare, night, local_run):
    declare(cron="30 1 * * *", tz=LONDON, name="nightly")
    start = at(night)
    # Heartbeats every 2 minutes through the night and the morning after (UTC 22:00 to 07:00).
    assert walk(start, start + timedelta(hours=9), timedelta(minutes=2)) == 1
    assert ticks("nightly") == [at(local_run)]
    # And the next night it is 01:30 local again.
    following = Schedule.objects.get(name="nightly").next_tick
    assert following.astimezone(schedules.ZoneInfo(LONDON)).strftime("%d %H:%M") == (
        at(local_run) + timedelta(days=1)
    ).strftime("%d 01:30")


def test_a_daily_0130_london_schedule_runs_once_a_night_across_a_year(declare):
    declare(cron="30 1 * * *", tz=LONDON, name="nightly")
    start = at("2026-01-01T12:00:00")
    walk(start, start + timedelta(days=365), timedelta(hours=1))
    nights = ticks("nightly")
    assert len(nights) == 365
    assert len({tick.astimezone(schedules.ZoneInfo(LONDON)).date() for tick in nights}) == 365


def test_a_paused_schedule_enqueues_nothing_and_resumes_from_its_next_tick(declare):
    declare(every=60, name="minutely")
    t0 = at("2026-06-01T12:00:00")
    walk(t0 - timedelta(seconds=30), t0 + timedelta(seconds=1), timedelta(seconds=2))
    assert schedules.set_paused("minutely", True, now=t0 + timedelta(seconds=10))
    assert walk(t0 + timedelta(seconds=10), t0 + timedelta(minutes=3, seconds=10), timedelta(seconds=20)) == 0
    assert schedules.set_paused("minutely", False, now=t0 + timedelta(minutes=3, seconds=10))
    # The ticks that fell while paused are dropped, not coalesced into a run at resume.
    assert schedules.enqueue_due(now=t0 + timedelta(minutes=3, seconds=12)) == 0
    assert schedules.enqueue_due(now=t0 + timedelta(minutes=4, seconds=1)) == 1
    assert ticks("minutely") == [t0, t0 + timedelta(minutes=4)]
    assert not schedules.set_paused("no-such-schedule", True)


def test_pause_and_resume_from_the_command_line(declare):
    declare(every=3600, name="hourly")
    out = StringIO()
    call_command("tasks", "schedule", "pause", "hourly", stdout=out)
    assert Schedule.objects.get(name="hourly").paused
    assert "Schedule hourly paused." in out.getvalue()
    listed = StringIO()
    call_command("tasks", stdout=listed)
    assert "hourly" in listed.getvalue() and "paused" in listed.getvalue()
    call_command("tasks", "schedule", "resume", "hourly", stdout=out)
    assert not Schedule.objects.get(name="hourly").paused
    with pytest.raises(CommandError, match="No schedule named 'nope'"):
        call_command("tasks", "schedule", "pause", "nope")


def test_the_admin_pauses_and_resumes_schedules(declare, client):
    from django.contrib.auth import get_user_model

    declare(every=3600, name="hourly")
    schedules.enqueue_due()
    staff = get_user_model().objects.create_user("ops", password="pw-for-tests-1", is_staff=True, is_superuser=True)
    client.force_login(staff)
    url = "/admin/tasks/schedule/"
    pk = Schedule.objects.get(name="hourly").pk
    assert "hourly" in client.get(url).text
    client.post(url, {"action": "pause", "_selected_action": [pk]})
    assert Schedule.objects.get(pk=pk).paused
    client.post(url, {"action": "resume", "_selected_action": [pk]})
    assert not Schedule.objects.get(pk=pk).paused


def test_a_schedule_removed_from_code_stops_and_shows_as_removed(declare):
    declare(every=60, name="minutely")
    t0 = at("2026-06-01T12:00:00")
    walk(t0 - timedelta(seconds=30), t0 + timedelta(seconds=1), timedelta(seconds=2))
    del schedules.registry["minutely"]  # the next deploy no longer declares it
    assert walk(t0 + timedelta(minutes=1), t0 + timedelta(minutes=5), timedelta(seconds=30)) == 0
    assert ticks("minutely") == [t0]
    [shown] = overview()["schedules"]
    assert (shown["name"], shown["state"], shown["next_tick"]) == ("minutely", "removed from code", None)
    assert shown["last_tick"] == t0.isoformat()


def test_the_overview_shows_next_and_last_tick_and_the_last_outcome(declare):
    declare(every=60, name="minutely")
    now = timezone.now()
    schedules.enqueue_due(now=now)
    [shown] = overview()["schedules"]
    assert shown["state"] == "active" and shown["last_tick"] is None and shown["last_outcome"] is None
    schedules.enqueue_due(now=now + timedelta(seconds=61))
    [shown] = overview(now + timedelta(seconds=62))["schedules"]
    assert shown["last_outcome"] == "READY"
    run_queue(["default"], limit=5)
    [shown] = overview()["schedules"]
    assert shown["last_outcome"] == SUCCESSFUL
    assert shown["when"] == "every 60s" and shown["task"] == "tests.sample_tasks.noop"
    assert datetime.fromisoformat(shown["next_tick"]) > datetime.fromisoformat(shown["last_tick"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
        ({"cron": "0 3 * *"}, "a cron expression has 5 fields"),
        ({"cron": "0 3 * * *", "tz": "Europe/Londres"}, "unknown time zone 'Europe/Londres'"),
        ({"every": 0}, "every must be a timedelta or seconds, at least 1 s"),
        ({"every": timedelta(milliseconds=1500)}, "every must be whole seconds"),
        ({"every": 60, "tz": LONDON}, "tz applies to cron schedules only"),
        ({"cron": "0 3 * * *", "every": 60}, "give exactly one of cron= or every="),
        ({"every": 60, "missed": "later"}, "missed must be one of coalesce, skip, each"),
        ({"every": 60, "args": (object(),)}, "args and kwargs must be JSON"),
    ],
)
def test_a_bad_schedule_is_a_system_check_error_at_start_up(declare, options, message):
    declare(name="bad", **options)
    errors = schedules.check_schedules(None)
    assert [error.id for error in errors] == ["tasks.E010"]
    assert message in errors[0].msg and "'bad'" in errors[0].msg
    with pytest.raises(SystemCheckError, match="tasks.E010"):
        call_command("check")
    # Workers leave it alone rather than crash on it.
    assert schedules.enqueue_due(now=timezone.now() + timedelta(days=2)) == 0


def test_schedule_must_sit_on_a_task_and_names_must_not_collide(declare):
    declare(task=lambda: None, every=60, name="not-a-task")
    declare(every=60, name="twice")
    declare(every=120, name="twice")
    messages = [(error.id, error.msg) for error in schedules.check_schedules(None)]
    assert ("tasks.E010", "Schedule 'not-a-task': @schedule must be stacked on a @task (above it).") in messages
    assert ("tasks.E011", "Schedule 'twice' is declared twice; give one a name=.") in messages


def test_parleys_housekeeping_is_on_schedules_not_cron():
    """Pruning finished tasks, sweeping expired exports and expired sessions are declared schedules, valid, nightly."""
    assert {name: spec.describe() for name, spec in schedules.registry.items()} == {
        "tasks.tasks.prune_finished": "cron 0 3 * * * UTC",
        "accounts.tasks.clear_expired_sessions": "cron 15 3 * * * UTC",
        "reports.tasks.sweep_expired": "cron 30 3 * * * UTC",
        "tasks.tasks.aggregate_minutes": "every 60s",
    }
    assert schedules.check_schedules(None) == []


def test_the_nightly_housekeeping_runs_from_its_schedules(settings):
    settings.TASKS_KEEP_FINISHED_DAYS = 7
    old = sample_tasks.noop.enqueue()
    run_queue(["default"], limit=5)
    TaskRecord.objects.filter(pk=old.id).update(finished_at=timezone.now() - timedelta(days=8))
    recent = sample_tasks.noop.enqueue()
    run_queue(["default"], limit=5)
    Session.objects.create(session_key="expired", session_data="", expire_date=timezone.now() - timedelta(days=1))
    Session.objects.create(session_key="current", session_data="", expire_date=timezone.now() + timedelta(days=1))
    night = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    schedules.enqueue_due(now=night)
    # The three nightly ones, and the dashboard's every-minute aggregation.
    assert schedules.enqueue_due(now=night + timedelta(hours=3, minutes=31)) == 4
    assert run_queue(["default"], limit=5) == 4
    assert not TaskRecord.objects.filter(pk=old.id).exists()
    assert TaskRecord.objects.filter(pk=recent.id).exists()
    assert list(Session.objects.values_list("session_key", flat=True)) == ["current"]
    ran = dict(TaskRecord.objects.filter(task_path__in=schedules.registry).values_list("task_path", "status"))
    assert ran == dict.fromkeys(schedules.registry, SUCCESSFUL)
    assert TaskRecord.objects.get(task_path="tasks.tasks.prune_finished").return_value == 1


def test_workers_racing_in_threads_enqueue_each_tick_once(declare):
    """Eight heartbeats at the same instant, each on its own connection: one task per tick."""
    declare(every=60, name="minutely", missed="each")
    t0 = at("2026-06-01T12:00:00")
    schedules.enqueue_due(now=t0 - timedelta(seconds=30))
    start = threading.Barrier(8)
    enqueued: list[int] = []

    def heartbeat() -> None:
        try:
            start.wait(timeout=10)
            enqueued.append(schedules.enqueue_due(now=t0 + timedelta(minutes=2, seconds=1)))
        finally:
            connection.close()

    threads = [threading.Thread(target=heartbeat) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(enqueued) == 8 and sum(enqueued) == 3
    assert ticks("minutely") == [t0 + timedelta(minutes=m) for m in range(3)]
    assert TaskRecord.objects.filter(task_path="tests.sample_tasks.noop").count() == 3


def test_the_tasks_page_lists_the_schedules(declare, client):
    from django.contrib.auth import get_user_model

    declare(cron="30 1 * * *", tz=LONDON, name="nightly")
    staff = get_user_model().objects.create_user("ops", password="pw-for-tests-1", is_staff=True)
    client.force_login(staff)
    page = client.get("/tasks/").text
    assert 'id="tasks-schedules"' in page
    assert "<td>nightly</td><td>cron 30 1 * * * Europe/London</td><td>active</td>" in page
