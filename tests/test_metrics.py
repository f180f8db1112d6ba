"""Prometheus metrics: /metrics and a worker's own endpoint, scraped and parsed with
prometheus_client's text parser after real tasks, messages and deliveries.

Counters live in the process for its whole life, so tests compare scrapes taken
before and after what they do.
"""

import asyncio
import itertools
import re
import sys
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from chat.consumers import post_message
from chat.models import Room
from notifications.delivery import finish
from notifications.models import Delivery
from tasks import progress, runner
from tasks.models import TaskRecord
from tests import sample_tasks
from tests.chat_helpers import ann, fresh_channel_layer, join, lobby, session_cookie  # noqa: F401 (fixtures)
from tests.fake_providers import fake_postmark, fake_twilio, providers  # noqa: F401 (fixtures)
from tests.processes import wait_until
from tests.run_tasks import run_queue
from tests.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-for-tests"
client_ids = (f"m{n}" for n in itertools.count())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape() -> dict[tuple[str, tuple], float]:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN


def test_metrics_need_the_bearer_token(settings):
    client = Client()
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404  # unset is never a match
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 404
    samples = scrape()
    assert value(samples, "parley_task_queue_depth", queue="compute", state="ready") == 0


def test_metrics_are_not_redirected_to_https(metrics_on, settings):
    """Prometheus scrapes a daphne's own port, behind no TLS proxy; pages still go to https."""
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/login/").status_code == 301
    scrape()


def test_a_cancelled_task_is_counted_as_cancelled_not_failed(metrics_on, tmp_path):
    before = scrape()
    result = sample_tasks.counted.enqueue(str(tmp_path / "steps"), 5, 0)
    record, task, task_result = runner.claim_and_start(["compute"], "metrics-host:1:cccccc")
    progress.cancel(result.id)
    runner.finish(runner.run_sync(record, task, task_result, "metrics-host:1:cccccc", runner.deadline_of(record, task)),
                  "metrics-host:1:cccccc")  # fmt: skip
    after = scrape()
    for outcome, count in (("cancelled", 1), ("failed", 0)):
        moved = value(after, "parley_tasks_finished_total", queue="compute", outcome=outcome) - value(
            before, "parley_tasks_finished_total", queue="compute", outcome=outcome
        )
        assert moved == count, outcome


def test_task_counters_histograms_and_depths_move_after_real_tasks(metrics_on, tmp_path):
    before = scrape()
    sample_tasks.add.enqueue(2, 40)
    sample_tasks.unserializable.enqueue()  # fails for good (one attempt)
    sample_tasks.flaky.enqueue(str(tmp_path / "flaky"), 1)  # fails once: READY again after its backoff
    waiting = sample_tasks.noop.enqueue()  # default queue, nobody runs it here
    TaskRecord.objects.filter(pk=waiting.id).update(available_at=timezone.now() - timedelta(seconds=90))
    assert run_queue(["compute"], 10) == 3
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("parley_tasks_enqueued_total", queue="compute") == 3
    assert moved("parley_tasks_enqueued_total", queue="default") == 1
    assert moved("parley_tasks_started_total", queue="compute") == 3
    assert moved("parley_tasks_finished_total", queue="compute", outcome="succeeded") == 1
    assert moved("parley_tasks_finished_total", queue="compute", outcome="failed") == 1
    assert moved("parley_tasks_finished_total", queue="compute", outcome="retry") == 1
    assert moved("parley_task_run_seconds_count", queue="compute") == 3
    assert moved("parley_task_wait_seconds_count", queue="compute") == 3
    assert moved("parley_task_run_seconds_bucket", queue="compute", le="+Inf") == 3
    # Depths are read from the database when scraped, not counted.
    assert value(after, "parley_task_queue_depth", queue="compute", state="deferred") == 1  # the retry
    assert value(after, "parley_task_queue_depth", queue="compute", state="ready") == 0
    assert value(after, "parley_task_queue_depth", queue="default", state="ready") == 1
    assert 90 <= value(after, "parley_task_oldest_ready_age_seconds", queue="default") < 200
    assert value(after, "parley_task_oldest_ready_age_seconds", queue="compute") == 0


def test_lease_reclaims_worker_losses_and_lost_leases_are_counted(metrics_on, settings):
    before = scrape()
    sample_tasks.add.enqueue(1, 1)
    record = runner.claim(["compute"], "dead-host:1:w")
    stale = timezone.now() - timedelta(seconds=settings.TASKS_LEASE + 1)
    TaskRecord.objects.filter(pk=record.pk).update(heartbeat_at=stale)
    assert runner.reclaim_lost() == ["compute"]
    assert not runner.record_success(record, "dead-host:1:w", 2)  # it was only slow: too late
    after = scrape()
    assert value(after, "parley_task_lease_reclaims_total", queue="compute", outcome="requeued") - value(
        before, "parley_task_lease_reclaims_total", queue="compute", outcome="requeued"
    ) == 1
    assert value(after, "parley_task_worker_losses_total") - value(before, "parley_task_worker_losses_total") == 1
    assert value(after, "parley_tasks_finished_total", queue="compute", outcome="lease_lost") - value(
        before, "parley_tasks_finished_total", queue="compute", outcome="lease_lost"
    ) == 1


def test_nothing_is_counted_without_a_token(settings):
    settings.METRICS_TOKEN = ""
    before = REGISTRY.get_sample_value("parley_tasks_enqueued_total", {"queue": "compute"}) or 0
    sample_tasks.add.enqueue(1, 2)
    assert run_queue(["compute"], 5) == 1
    assert (REGISTRY.get_sample_value("parley_tasks_enqueued_total", {"queue": "compute"}) or 0) == before


@pytest.mark.usefixtures("fresh_channel_layer")
async def test_sockets_messages_broadcasts_and_catch_up_reads_are_counted(metrics_on, lobby, ann):
    cookie = await sync_to_async(session_cookie)(ann)
    before = await sync_to_async(scrape)()
    socket, _ = await join("lobby", cookie)
    try:
        assert (await socket.receive_json_from(timeout=5))["type"] == "join"  # a broadcast frame, to itself too
        with_socket = await sync_to_async(scrape)()
        await socket.send_json_to({"type": "message", "text": "hello", "client_id": "one"})
        assert (await socket.receive_json_from(timeout=5))["text"] == "hello"
        await socket.send_json_to({"type": "message", "text": "hello", "client_id": "one"})  # a retry
        assert (await socket.receive_json_from(timeout=5))["text"] == "hello"
        # Two messages stored elsewhere, and only the second broadcast: the socket reads both.
        room = await Room.objects.aget(label="lobby")
        await sync_to_async(post_message)(room, ann, "first", next(client_ids))
        second = await sync_to_async(post_message)(room, ann, "second", next(client_ids))
        await get_channel_layer().group_send(room.group_name, second)
        assert [(await socket.receive_json_from(timeout=5))["text"] for _ in range(2)] == ["first", "second"]
        during = await sync_to_async(scrape)()
    finally:
        await socket.disconnect()
    # leave_room runs after the close: wait for the gauge, bounded.
    for _ in range(100):
        after = await sync_to_async(scrape)()
        if value(after, "parley_chat_sockets_open") == value(before, "parley_chat_sockets_open"):
            break
        await asyncio.sleep(0.05)

    def moved(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    assert value(with_socket, "parley_chat_sockets_open") - value(before, "parley_chat_sockets_open") == 1
    assert value(after, "parley_chat_sockets_open") == value(before, "parley_chat_sockets_open")
    assert moved("parley_chat_messages_stored_total") == 1  # the retry stored nothing
    assert moved("parley_chat_broadcasts_delivered_total", kind="message") == 1  # not the retry's: sent already
    assert moved("parley_chat_broadcasts_delivered_total", kind="frame") == 1  # the join
    assert moved("parley_chat_catchup_reads_total", cause="broadcast") == 1
    assert moved("parley_chat_catchup_messages_total") == 2


def test_deliveries_are_counted_by_channel_provider_and_status(metrics_on, providers, ann):  # noqa: F811
    twilio, postmark = providers
    bob = get_user_model().objects.create_user("bob", email="bob@example.com")
    bob.mention_channel, bob.email_confirmed = "email", True
    bob.save()
    cat = get_user_model().objects.create_user("cat")
    cat.mention_channel, cat.phone, cat.phone_confirmed = "sms", "+14155550199", True
    cat.save()
    room = Room.objects.create(label="general", created_by=ann)
    twilio.script(("error", 500), ("error", 400, 21211))  # a retry, then an invalid number
    before = scrape()
    room.post(ann, "@bob and @cat, lunch?", next(client_ids))
    run_queue(["notifications"], 30, "test-host:1:notify")
    TaskRecord.objects.filter(status="READY").update(available_at=timezone.now())  # the SMS retry's backoff
    run_queue(["notifications"], 30, "test-host:1:notify")
    finish(Delivery.objects.get(channel="email"), Delivery.Status.FAILED)  # already final: changes nothing
    after = scrape()
    assert sorted(Delivery.objects.values_list("channel", "status")) == [("email", "sent"), ("sms", "failed")]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("parley_notification_deliveries_total", channel="email", provider="postmark", status="sent") == 1
    assert moved("parley_notification_deliveries_total", channel="sms", provider="twilio", status="failed") == 1
    assert moved("parley_notification_retries_total", channel="sms", provider="twilio") == 1


@pytest.mark.e2e
def test_a_worker_serves_its_own_metrics_to_token_bearers_only(stack, tmp_path):
    port = free_port()
    stack.env["METRICS_TOKEN"] = TOKEN
    stack._spawn("worker", [sys.executable, "manage.py", "runworker", "--metrics-port", str(port), "compute"])
    url = f"http://127.0.0.1:{port}/metrics"

    def get(token: str | None) -> tuple[int, str]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""

    wait_until(lambda: get(TOKEN)[0] == 200, timeout=30, message="worker metrics served")
    assert get(None)[0] == 401
    assert get("wrong")[0] == 401
    stack.manage("shell", "--no-imports", "-c", "from tests import sample_tasks; sample_tasks.add.enqueue(1, 2)")

    def finished() -> float:
        return value(parse(get(TOKEN)[1]), "parley_tasks_finished_total", queue="compute", outcome="succeeded")

    wait_until(lambda: finished() == 1, timeout=30, message="the task counted by the worker")
    samples = parse(get(TOKEN)[1])
    assert value(samples, "parley_tasks_started_total", queue="compute") == 1
    assert value(samples, "parley_task_slots", queue="compute", kind="sync") >= 1
    assert not any(name == "parley_task_queue_depth" for name, _ in samples)  # no database reads in a worker


def test_the_sample_dashboard_queries_only_metrics_parley_serves():
    import chat.metrics  # noqa: F401 (registers its metrics)
    import notifications.metrics  # noqa: F401
    from tasks.metrics import QueueDepths

    served = {family.name for family in REGISTRY.collect()} | {family.name for family in QueueDepths().describe()}
    dashboard = (Path(__file__).resolve().parent.parent / "docs" / "grafana-parley.json").read_text()
    queried = {re.sub(r"_(total|bucket)$", "", name) for name in re.findall(r"parley_\w+", dashboard)}
    assert queried and queried <= served, queried - served
