"""What a job's watchers are told, and how often: shared by the job page's socket and the chat box.

The task broadcasts its snapshot on its progress group (at most 10 a second);
a JobWatcher turns snapshots into frames with a percent, a rate and an ETA,
drops frames that come too fast, and says when a frame is due because the task
has been silent (queued, or its worker died) for MAX_SILENCE seconds.
"""

import time
from collections import deque
from typing import Any

from channels.db import database_sync_to_async
from django.tasks import TaskResultStatus
from django.urls import reverse

from tasks.progress import progress_group, snapshot_of

from .models import Job

MIN_INTERVAL = 0.1  # at most 10 frames a second
MAX_SILENCE = 2.0  # and at least one every 2 seconds
RATE_WINDOW = 10.0  # the rate is measured over the last 10 seconds
TERMINAL = {TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED}


class RateMeter:
    """Rows per second over a sliding window of (time, rows done) samples."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()  # restarted from a checkpoint: the old samples mislead
        self.samples.append((at, done))
        while at - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 0.2 else None


def job_frame(job: Job, task: dict[str, Any] | None, rate: float | None) -> dict[str, Any]:
    """A job's state for the browser; `task` is its runner snapshot (None once the record is gone)."""
    status = job.status_for(task["status"], task.get("error")) if task else job.status
    done = (task or {}).get("done") or 0
    total = (task or {}).get("total")
    if status == Job.Status.DONE:
        percent = 100.0
    else:
        percent = round(min(100.0, 100.0 * done / total), 1) if total else 0.0
    eta = round((total - done) / rate, 1) if rate and total and status == Job.Status.RUNNING else None
    url = None
    if status == Job.Status.DONE:
        if job.kind == Job.Kind.EXPORT:
            url = reverse("reports:download", args=[job.pk])
        else:
            url = f'{reverse("reports:insights", args=[job.room.label])}?job={job.pk}'
    return {
        "type": "job.progress",
        "job": job.pk,
        "kind": job.kind,
        "format": job.format,
        "status": status,
        "done": done,
        "total": total,
        "percent": percent,
        "rate": round(rate, 1) if rate is not None and status == Job.Status.RUNNING else None,
        "eta": eta,
        # A note says what a running task is doing; once it ends the status says it all.
        "note": (task or {}).get("note", "") if status in (Job.Status.QUEUED, Job.Status.RUNNING) else "",
        "attempt": (task or {}).get("attempts", 0),
        "error": job.user_error or None,
        "url": url,
    }


@database_sync_to_async
def load_job(pk: int) -> Job | None:
    job = Job.objects.select_related("room", "requested_by").filter(pk=pk).first()
    if job is not None:
        job.task_result  # read here, off the event loop: frames read the job's status
    return job


class JobWatcher:
    """One socket's view of one job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.meter = RateMeter()
        self.last_sent = 0.0
        self.finished = False

    @property
    def group_name(self) -> str:
        return progress_group(self.job.task_id)

    def due(self) -> bool:
        return not self.finished and time.monotonic() - self.last_sent >= MAX_SILENCE

    def _frame(self, task: dict[str, Any] | None) -> dict[str, Any]:
        now = time.monotonic()
        if task and task.get("done") is not None:
            self.meter.add(now, task["done"])
        frame = job_frame(self.job, task, self.meter.rate())
        self.last_sent = now
        self.finished = frame["status"] not in (Job.Status.QUEUED, Job.Status.RUNNING)
        return frame

    async def on_update(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """The frame for a broadcast snapshot, or None if it came too soon after the last."""
        if task["status"] in TERMINAL:
            return await self.refresh()  # the outcome (file, error) is on the job row
        if time.monotonic() - self.last_sent < MIN_INTERVAL:
            return None
        return self._frame(task)

    async def refresh(self) -> dict[str, Any]:
        """The frame for the job as the database has it now."""
        self.job = await load_job(self.job.pk) or self.job
        task = await database_sync_to_async(snapshot_of)(self.job.task_id) if self.job.task_id is not None else None
        return self._frame(task)
