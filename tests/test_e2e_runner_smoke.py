import pytest

from tests.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_runworker_runs_a_task_enqueued_by_another_process(stack):
    """A real runworker runs a task that a separate `manage.py shell` process enqueued.

    With its database poll a minute apart, only the bell can wake it in time: runworker
    must listen on the layer bells ring on (CHANNEL_LAYERS["tasks"]), not the default one.
    """
    stack.env["TASKS_POLL_INTERVAL"] = "60"
    stack.runworker("compute")
    enqueue = "from tests.sample_tasks import add; print(add.enqueue(2, 40).id)"
    result_id = stack.manage("shell", "--no-imports", "-c", enqueue).stdout.strip()
    check = (
        f"from tests.sample_tasks import add; r = add.get_result('{result_id}'); "
        "print(r.status, r.return_value if r.is_finished else '', r.attempts)"
    )
    assert wait_until(
        lambda: stack.manage("shell", "--no-imports", "-c", check).stdout.split() == ["SUCCESSFUL", "42", "1"],
        timeout=20,
        interval=0.2,
    )
