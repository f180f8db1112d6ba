"""The /tasks/ dashboard: per-minute aggregates, the charts' numbers for a known run, re-run, and staff access."""

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.utils import timezone

from tasks import runner
from tasks.models import QueueMinute, TaskRecord
from tasks.monitor import CHART_BUCKET_MINUTES, aggregate_minutes, charts, prune
from tasks.schedules import runnable
from tests import sample_tasks

pytestmark = pytest.mark.django_db(transaction=True)

W1 = "dash-host:1:aaaaaa"
PASSWORD = "a long passphrase 42"


def run_one(queue: str) -> str:
    """Claim, run and finish the next task of `queue`, as a worker would."""
    record, task, task_result = runner.claim_and_start([queue], W1)
    runner.finish(runner.run_sync(record, task, task_result, W1, runner.deadline_of(record, task)), W1)
    return str(record.pk)


def fail_one(queue: str) -> str:
    """Claim the next task of `queue` and fail it for good."""
    record = runner.claim([queue], W1)
    record.max_attempts = 1
    runner.record_failure(record, W1, RuntimeError("disk full"))
    return str(record.pk)


def backdate(pk: str, finished_at: datetime, run: float, wait: float) -> None:
    """Make a finished task look as if it waited `wait` s, then ran `run` s, ending at `finished_at`."""
    started = finished_at - timedelta(seconds=run)
    TaskRecord.objects.filter(pk=pk).update(
        enqueued_at=started - timedelta(seconds=wait), run_after=None, started_at=started,
        last_attempted_at=started, finished_at=finished_at,
    )  # fmt: skip


def bucket_start(now: datetime) -> datetime:
    """The start of the chart bucket holding `now` (buckets are aligned on the hour)."""
    return now.replace(minute=now.minute - now.minute % CHART_BUCKET_MINUTES, second=0, microsecond=0)


def known_run(now: datetime) -> dict[str, datetime]:
    """compute, in the previous bucket: 3 ok (run 1, 2, 10 s; wait 0.5, 0.5, 4 s), 1 failed (run 4 s, wait 1 s),
    1 cancelled; default, the bucket before: 2 ok (run 3 s, no wait); one more compute task finishing now,
    in a minute not yet closed."""
    current = bucket_start(now)
    compute_minute = current - timedelta(minutes=25)
    default_minute = current - timedelta(minutes=55)
    for a, run, wait in [(1, 1, 0.5), (2, 2, 0.5), (3, 10, 4)]:
        sample_tasks.add.enqueue(a, a)
        backdate(run_one("compute"), compute_minute + timedelta(seconds=20 + a), run, wait)
    sample_tasks.flaky.enqueue("/nonexistent", 0)
    backdate(fail_one("compute"), compute_minute + timedelta(seconds=40), 4, 1)
    cancelled = sample_tasks.add.enqueue(9, 9)
    runner.claim(["compute"], W1)
    TaskRecord.objects.filter(pk=cancelled.id).update(cancel_requested=True)
    runner.record_failure(TaskRecord.objects.get(pk=cancelled.id), W1, RuntimeError("cancelled"))
    backdate(cancelled.id, compute_minute + timedelta(seconds=50), 1, 1)
    for _ in range(2):
        sample_tasks.noop.enqueue()
        backdate(run_one("default"), default_minute + timedelta(seconds=10), 3, 0)
    sample_tasks.add.enqueue(5, 5)
    backdate(run_one("compute"), now, 1, 0)
    return {"compute": current - timedelta(minutes=30), "default": current - timedelta(minutes=60)}


def nonzero(chart: dict) -> list[tuple]:
    return [(b["start"], b["succeeded"], b["failed"], b["run_p95"], b["wait_p95"])
            for b in chart["buckets"] if b["succeeded"] or b["failed"]]  # fmt: skip


def test_the_charts_have_the_numbers_of_a_known_run():
    now = timezone.now()
    buckets = known_run(now)
    assert aggregate_minutes(now) == 2
    minute = QueueMinute.objects.get(queue_name="compute")
    assert (minute.succeeded, minute.failed, minute.run_p50, minute.run_p95, minute.wait_p50, minute.wait_p95) == (
        3, 1, 2.0, 10.0, 0.5, 4.0,
    )
    data = {chart["queue"]: chart for chart in charts(now)}
    assert set(data) == {"compute", "default"}
    assert len(data["compute"]["buckets"]) == 24 * 60 // CHART_BUCKET_MINUTES
    assert data["compute"]["buckets"][-1]["start"] == bucket_start(now)
    assert nonzero(data["compute"]) == [(buckets["compute"], 3, 1, 10.0, 4.0)]
    assert nonzero(data["default"]) == [(buckets["default"], 2, 0, 3.0, 0.0)]


def test_aggregating_again_or_later_counts_nothing_twice_and_a_rerun_task_leaves_its_minute():
    now = timezone.now()
    known_run(now)
    aggregate_minutes(now)
    rows = list(QueueMinute.objects.values_list("queue_name", "minute", "succeeded", "failed"))
    aggregate_minutes(now)
    aggregate_minutes(now.replace(second=59))  # later in the same minute
    assert list(QueueMinute.objects.values_list("queue_name", "minute", "succeeded", "failed")) == rows

    # A minute later the task that finished "now" is in a closed minute; nothing else moves.
    aggregate_minutes(now + timedelta(minutes=1))
    later = list(QueueMinute.objects.values_list("queue_name", "minute", "succeeded", "failed"))
    assert later == sorted([*rows, ("compute", now.replace(second=0, microsecond=0), 1, 0)], key=lambda r: (r[1], r[0]))


def test_two_workers_aggregating_at_once_count_each_task_once():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing runs at once")
    now = timezone.now()
    known_run(now)
    barrier = threading.Barrier(2)

    def aggregate() -> int:
        try:
            barrier.wait(timeout=10)
            return aggregate_minutes(now)
        finally:
            connection.close()

    for round_ in range(8):  # a race: several rounds, from no rows (both insert) and from rows (both replace)
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(aggregate) for _ in range(2)]:
                done.result(timeout=30)  # (how many rows each wrote depends on which saw the other's)
        assert sorted(QueueMinute.objects.values_list("queue_name", "succeeded", "failed")) == [
            ("compute", 3, 1), ("default", 2, 0),
        ]
        if round_ % 2 == 0:
            QueueMinute.objects.all().delete()


def test_a_settled_minute_is_recomputed_whole_when_a_task_leaves_it():
    now = timezone.now()
    sample_tasks.flaky.enqueue("/nonexistent", 0)
    pk = fail_one("compute")
    backdate(pk, now - timedelta(minutes=1), 1, 0)
    aggregate_minutes(now)
    assert QueueMinute.objects.get().failed == 1
    TaskRecord.objects.filter(pk=pk).update(status="READY", finished_at=None)  # as tasks.monitor.rerun leaves it
    aggregate_minutes(now)
    assert not QueueMinute.objects.exists()


def test_prune_deletes_old_minutes_with_old_tasks():
    now = timezone.now()
    QueueMinute.objects.create(queue_name="compute", minute=now - timedelta(days=8), succeeded=1)
    QueueMinute.objects.create(queue_name="compute", minute=now - timedelta(hours=1), succeeded=2)
    prune(timedelta(days=7), now)
    assert list(QueueMinute.objects.values_list("succeeded", flat=True)) == [2]


def test_the_aggregation_runs_every_minute_as_a_schedule():
    spec = runnable()["tasks.tasks.aggregate_minutes"]
    assert spec.every == timedelta(seconds=60)
    assert spec.task.queue_name == "default"


# --- the page, for staff who are not superusers -------------------------------------------


def staff_client(operator: bool = True, **extra) -> Client:
    user = get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True)
    if operator:
        user.groups.add(Group.objects.get(name="Task operators"))
    client = Client(**extra)
    client.force_login(user)
    return client


def test_the_page_draws_the_known_run_for_a_staff_member():
    now = timezone.now()
    buckets = known_run(now)
    aggregate_minutes(now)
    response = staff_client().get("/tasks/")
    assert response.status_code == 200
    (compute,) = [chart for chart in response.context["charts"] if chart["queue"] == "compute"]
    assert nonzero(compute) == [(buckets["compute"], 3, 1, 10.0, 4.0)]
    html = response.text
    drawn = re.findall(r'data-start="([^"]+)" data-succeeded="(\d+)" data-failed="(\d+)" data-run-p95="([^"]+)"', html)
    assert len(drawn) == 2 * 24 * 60 // CHART_BUCKET_MINUTES
    assert {d for d in drawn if d[1:3] != ("0", "0")} == {
        (buckets["compute"].isoformat(), "3", "1", "10.0"), (buckets["default"].isoformat(), "2", "0", "3.0"),
    }
    assert 'href="/tasks/">Tasks</a>' in html  # the header link, for staff


def test_the_header_links_the_dashboard_for_staff_only():
    user = get_user_model().objects.create_user("member", password=PASSWORD)
    client = Client()
    client.force_login(user)
    assert 'href="/tasks/">Tasks</a>' not in client.get("/me/").text
    assert client.get("/tasks/").status_code == 302  # to the admin's login


def test_the_rerun_button_puts_a_failure_back_and_needs_staff_and_csrf():
    sample_tasks.flaky.enqueue("/nonexistent", 0)
    pk = fail_one("compute")
    client = staff_client(enforce_csrf_checks=True)
    page = client.get("/tasks/")
    assert f'action="/tasks/failures/{pk}/rerun/"' in page.text
    assert client.post(f"/tasks/failures/{pk}/rerun/").status_code == 403  # no CSRF token
    token = page.cookies["csrftoken"].value
    response = client.post(f"/tasks/failures/{pk}/rerun/", {"csrfmiddlewaretoken": token}, follow=True)
    assert TaskRecord.objects.get(pk=pk).status == "READY"
    assert f"Task {pk} is queued to run again." in response.text
    again = client.post(f"/tasks/failures/{pk}/rerun/", {"csrfmiddlewaretoken": token}, follow=True)
    assert "Not re-run: " in again.text and "READY, not FAILED" in again.text

    member = get_user_model().objects.create_user("member", password=PASSWORD)
    other = Client()
    other.force_login(member)
    sample_tasks.flaky.enqueue("/nonexistent", 0)
    second = fail_one("compute")
    assert other.post(f"/tasks/failures/{second}/rerun/").status_code == 302
    assert TaskRecord.objects.get(pk=second).status == "FAILED"


def test_running_tasks_show_their_start_and_age():
    sample_tasks.noop.enqueue()
    record = runner.claim(["default"], W1)
    TaskRecord.objects.filter(pk=record.pk).update(started_at=timezone.now() - timedelta(seconds=90))
    text = staff_client().get("/tasks/").text
    row = re.search(r'<tr title="%s">.*?</tr>' % record.pk, text, re.S).group(0)
    assert re.search(r'<time datetime="[^"]+">', row) and re.search(r"<td>9\ds</td>", row)


def test_task_operators_see_task_results_in_the_admin_and_other_staff_do_not():
    sample_tasks.noop.enqueue()
    operator = staff_client()
    assert operator.get("/admin/tasks/taskrecord/").status_code == 200
    assert operator.get("/admin/tasks/schedule/").status_code == 200
    assert operator.get("/admin/tasks/pausedqueue/").status_code == 200
    assert operator.get("/admin/tasks/pausedqueue/add/").status_code == 200  # pausing a queue
    assert operator.get("/admin/tasks/taskrecord/add/").status_code == 403  # tasks come from .enqueue()
    get_user_model().objects.create_user("plain", password=PASSWORD, is_staff=True)
    plain = Client()
    plain.force_login(get_user_model().objects.get(username="plain"))
    assert plain.get("/admin/tasks/taskrecord/").status_code == 403
    assert plain.get("/tasks/").status_code == 200  # the dashboard itself is for every staff member
