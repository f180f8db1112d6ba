"""Unique tasks: enqueue_unique() keeps or replaces the one task holding a key, on either stack."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from tasks import progress, runner
from tasks.backends import aenqueue_unique, enqueue_unique
from tasks.models import TaskRecord
from tests import sample_tasks

pytestmark = pytest.mark.django_db(transaction=True)

W1 = "unique-host:1:aaaaaa"


def race(count: int, call) -> list:
    """`call(i)` from `count` threads at once, each on its own database connection."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = call(i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    return results


def test_twenty_racing_enqueues_with_one_key_leave_one_task_keep():
    results = race(20, lambda i: enqueue_unique(sample_tasks.add, "export:room-1", (i, i)))
    (record,) = TaskRecord.objects.all()
    assert {result.id for result in results} == {str(record.pk)}
    assert record.unique_key == "export:room-1" and record.status == "READY"
    assert record.args in [[i, i] for i in range(20)]


def test_twenty_racing_enqueues_with_one_key_leave_one_task_replace():
    results = race(20, lambda i: enqueue_unique(sample_tasks.add, "digest:user-7", (i, 0), mode="replace"))
    (record,) = TaskRecord.objects.all()
    assert {result.id for result in results} == {str(record.pk)}
    assert record.args in [[i, 0] for i in range(20)] and record.status == "READY"


def test_keep_returns_the_waiting_or_running_task_until_it_finishes():
    first = enqueue_unique(sample_tasks.add, "k", (1, 1))
    assert enqueue_unique(sample_tasks.add, "k", (2, 2)).id == first.id
    assert enqueue_unique(sample_tasks.add, "other", (2, 2)).id != first.id
    record = runner.claim(["compute"], W1)
    assert str(record.pk) == first.id and record.unique_key == "k"
    assert enqueue_unique(sample_tasks.add, "k", (3, 3)).id == first.id  # running still holds it
    runner.record_success(record, W1, 2)
    after = enqueue_unique(sample_tasks.add, "k", (4, 4))
    assert after.id != first.id and TaskRecord.objects.get(pk=after.id).args == [4, 4]
    assert TaskRecord.objects.get(pk=first.id).args == [1, 1]


def test_a_retry_keeps_its_key():
    first = enqueue_unique(sample_tasks.add.using(), "k", (1, 1))
    TaskRecord.objects.filter(pk=first.id).update(max_attempts=3)
    record = runner.claim(["compute"], W1)
    assert runner.record_failure(record, W1, RuntimeError("once"))
    assert TaskRecord.objects.get(pk=first.id).status == "READY"
    assert enqueue_unique(sample_tasks.add, "k", (2, 2)).id == first.id


def test_keep_while_waiting_only_lets_one_more_wait_while_it_runs():
    first = enqueue_unique(sample_tasks.add, "k", (1, 1), while_running=False)
    assert runner.claim(["compute"], W1).unique_key is None
    second = enqueue_unique(sample_tasks.add, "k", (2, 2), while_running=False)
    assert second.id != first.id
    assert enqueue_unique(sample_tasks.add, "k", (3, 3), while_running=False).id == second.id
    assert TaskRecord.objects.filter(status="READY").count() == 1


def test_replace_gives_the_waiting_task_new_arguments_and_run_after():
    later = timezone.now() + timedelta(minutes=5)
    first = enqueue_unique(sample_tasks.add, "digest", (1, 1), mode="replace")
    again = enqueue_unique(sample_tasks.add.using(run_after=later, priority=4), "digest", (2, 2), mode="replace")
    assert again.id == first.id
    record = TaskRecord.objects.get(pk=first.id)
    assert (record.args, record.priority, record.run_after, record.available_at) == ([2, 2], 4, later, later)
    assert runner.claim(["compute"], W1) is None  # deferred now


def test_replace_leaves_a_running_task_alone_and_enqueues_the_next():
    first = enqueue_unique(sample_tasks.add, "digest", (1, 1), mode="replace")
    runner.claim(["compute"], W1)
    second = enqueue_unique(sample_tasks.add, "digest", (2, 2), mode="replace")
    third = enqueue_unique(sample_tasks.add, "digest", (3, 3), mode="replace")
    assert second.id == third.id != first.id
    assert TaskRecord.objects.get(pk=first.id).args == [1, 1]
    assert TaskRecord.objects.get(pk=second.id).args == [3, 3]


@pytest.mark.parametrize(
    ("key", "options", "message"),
    [
        ("", {}, "unique key must be a string"),
        ("x" * 201, {}, "unique key must be a string"),
        ("k", {"mode": "debounce"}, "mode must be 'keep' or 'replace'"),
        ("k", {"mode": "replace", "while_running": True}, "holds its key only while the task waits"),
    ],
)
def test_bad_keys_and_modes_are_refused(key, options, message):
    with pytest.raises(InvalidTask, match=message):
        enqueue_unique(sample_tasks.add, key, (1, 1), **options)
    assert not TaskRecord.objects.exists()


def test_a_cancelled_task_holds_no_key():
    waiting = enqueue_unique(sample_tasks.add, "k", (1, 1))
    progress.cancel(waiting.id)
    running = enqueue_unique(sample_tasks.add, "k", (2, 2), mode="replace")
    assert running.id != waiting.id
    runner.claim(["compute"], W1)
    progress.cancel(running.id)  # still RUNNING until its next report, but cancelled
    TaskRecord.objects.filter(pk=running.id).update(unique_while_running=True, unique_key="k")
    fresh = enqueue_unique(sample_tasks.add, "k", (3, 3))
    assert fresh.id not in (waiting.id, running.id)
    assert TaskRecord.objects.get(pk=fresh.id).args == [3, 3]


async def test_aenqueue_unique_from_async_code():
    first = await aenqueue_unique(sample_tasks.add, "k", (1, 1))
    again = await aenqueue_unique(sample_tasks.add, "k", (2, 2), mode="replace")
    assert again.id == first.id
    assert (await TaskRecord.objects.aget(pk=first.id)).args == [2, 2]
