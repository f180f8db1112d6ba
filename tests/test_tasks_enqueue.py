"""enqueue_many() and the bells that enqueues ring, on whichever stack the session runs.

The bell rules that depend on Redis (a queue with a bell waiting gets no second
one, yet every idle worker still gets one) run on the PostgreSQL + Redis stack.
"""

import asyncio
import os
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.tasks.exceptions import InvalidTask
from django.tasks.signals import task_enqueued
from django.test.utils import CaptureQueriesContext

from chat.models import Room
from notifications import notify
from notifications.models import Delivery
from tasks import backends
from tasks.backends import enqueue_many
from tasks.models import TaskRecord
from tests import sample_tasks

pytestmark = pytest.mark.django_db(transaction=True)

on_redis = pytest.mark.skipif(os.environ["PARLEY_TEST_STACK"] != "postgres", reason="bells on Redis")


def test_enqueue_many_stores_every_task_in_one_statement():
    announced = []

    def on_enqueued(sender, task_result, **kwargs):
        announced.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        with CaptureQueriesContext(connection) as queries:
            results = enqueue_many(sample_tasks.add.using(priority=3), [((i,), {"b": 2 * i}) for i in range(200)])
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert len(queries) == 1 and queries[0]["sql"].startswith("INSERT"), [q["sql"][:80] for q in queries]
    assert announced == [result.id for result in results]
    records = {str(r.pk): r for r in TaskRecord.objects.all()}
    assert len(records) == 200
    for i, result in enumerate(results):
        record = records[result.id]
        assert (record.args, record.kwargs, record.priority, record.queue_name) == ([i], {"b": 2 * i}, 3, "compute")
        assert (record.status, record.max_attempts, record.worker_ids, record.errors) == ("READY", 1, [], [])
        assert (result.args, result.kwargs, result.status) == ([i], {"b": 2 * i}, "READY")
        assert result.enqueued_at == record.enqueued_at == record.available_at
    assert sample_tasks.add.get_result(results[7].id).args == [7]


def test_enqueue_many_names_the_bad_item_and_stores_nothing():
    with pytest.raises(InvalidTask, match=r"add \(item 2 of enqueue_many\(\)\) must be JSON-serializable"):
        enqueue_many(sample_tasks.add, [((1, 2), {}), ((3, 4), {}), ((object(), 1), {})])
    with pytest.raises(InvalidTask, match=r"Item 1 of enqueue_many\(\) must be an \(args, kwargs\) pair"):
        enqueue_many(sample_tasks.add, [((1, 2), {}), (1, 2)])
    with pytest.raises(InvalidTask, match="Queue 'nope' is not valid"):
        enqueue_many(sample_tasks.add.using(queue_name="nope"), [((1, 2), {})])
    assert enqueue_many(sample_tasks.add, []) == []
    assert not TaskRecord.objects.exists()


async def test_enqueue_many_rings_after_commit_and_never_for_a_rollback(task_layer):
    def enqueue_and_roll_back():
        with transaction.atomic():
            enqueue_many(sample_tasks.add, [((1, 1), {})] * 3)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await database_sync_to_async(enqueue_and_roll_back)()
    assert not await TaskRecord.objects.aexists()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task_layer.receive("compute"), 0.3)

    def enqueue_then_commit_later():
        with transaction.atomic():
            enqueue_many(sample_tasks.add, [((1, 1), {})] * 3)
            time.sleep(0.8)

    committing = asyncio.ensure_future(database_sync_to_async(enqueue_then_commit_later)())
    with pytest.raises(TimeoutError):  # not while the transaction is open
        await asyncio.wait_for(task_layer.receive("compute"), 0.4)
    assert await asyncio.wait_for(task_layer.receive("compute"), 5) == {"type": "task.ready"}
    await committing
    assert await TaskRecord.objects.acount() == 3


@on_redis
async def test_a_queue_with_a_bell_waiting_gets_no_second_one(task_layer):
    """No worker is waiting on a channel that holds a bell (Redis would have handed it over)."""

    async def bells_waiting() -> int:
        await asyncio.to_thread(backends._all_sent.wait, 5)  # bells from enqueue are sent by the bell loop
        return await task_layer.connection(0).zcard(task_layer.prefix + "compute")

    await database_sync_to_async(sample_tasks.add.enqueue)(1, 1)
    assert await bells_waiting() == 1
    for _ in range(5):
        await database_sync_to_async(sample_tasks.add.enqueue)(1, 1)
    await database_sync_to_async(enqueue_many)(sample_tasks.add, [((1, 1), {})] * 5)
    assert await bells_waiting() == 1
    # A worker takes it: the next task rings again.
    assert await asyncio.wait_for(task_layer.receive("compute"), 2) == {"type": "task.ready"}
    await database_sync_to_async(sample_tasks.add.enqueue)(1, 1)
    assert await bells_waiting() == 1


@on_redis
@pytest.mark.parametrize("how", ["one commit each", "enqueue_many"])
async def test_every_idle_worker_still_gets_a_bell(task_layer, how):
    """Two workers waiting on the queue, two new tasks: both wake, with no help from polling."""
    workers = [channel_layers.make_backend("tasks") for _ in range(2)]
    waiting = [asyncio.ensure_future(worker.receive("compute")) for worker in workers]
    try:
        await asyncio.sleep(0.3)  # both are blocked on the channel now
        if how == "enqueue_many":
            await database_sync_to_async(enqueue_many)(sample_tasks.add, [((1, 1), {}), ((2, 2), {})])
        else:
            await database_sync_to_async(sample_tasks.add.enqueue)(1, 1)
            await database_sync_to_async(sample_tasks.add.enqueue)(2, 2)
        done, _ = await asyncio.wait(waiting, timeout=2)
        assert len(done) == 2, "an idle worker was left without a bell"
    finally:
        for future in waiting:
            future.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for worker in workers:
            await worker.close_pools()


def test_a_mention_of_many_users_enqueues_their_deliveries_in_one_insert():
    """notifications' fan-out: a delivery per user mentioned, their send_delivery tasks in one INSERT."""
    users = get_user_model().objects
    ann = users.create_user("ann")
    room = Room.objects.create(label="general", created_by=ann)
    for name in ("bob", "cy", "di"):
        users.create_user(name, email=f"{name}@example.com", email_confirmed=True, mention_channel="email")
    message, _ = room.post(ann, "@bob @cy @di look", "c1")
    with CaptureQueriesContext(connection) as queries:
        assert notify.notify_mentions(message.pk) == 3
    table = TaskRecord._meta.db_table
    inserts = [q["sql"] for q in queries if q["sql"].startswith(f'INSERT INTO "{table}"')]
    assert len(inserts) == 1
    deliveries = sorted(Delivery.objects.values_list("pk", flat=True))
    tasks = TaskRecord.objects.filter(task_path="notifications.tasks.send_delivery")
    assert sorted(record.args[0] for record in tasks) == deliveries and len(deliveries) == 3
