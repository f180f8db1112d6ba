import asyncio
import logging

from channels.layers import get_channel_layer
from channels.routing import get_default_application
from daphne.management.commands.runserver import Command as DaphneRunserverCommand
from django.conf import settings

from tasks.backends import bell_layer_alias, task_queues
from tasks.worker import TaskWorker

logger = logging.getLogger(__name__)


class Command(DaphneRunserverCommand):
    """daphne's runserver, plus the embedded task worker when TASKS_EMBEDDED_WORKER is on.

    The in-memory channel layer cannot cross processes, so on the embedded
    default (no REDIS_URL) the worker must share the server's event loop.
    """

    def inner_run(self, *args, **options) -> None:
        if settings.TASKS_EMBEDDED_WORKER:
            from twisted.internet import reactor  # daphne installed the asyncio reactor

            reactor.callWhenRunning(self.start_embedded_worker)
        super().inner_run(*args, **options)

    def start_embedded_worker(self) -> None:
        worker = TaskWorker(
            application=get_default_application(),
            channels=sorted(task_queues()),
            channel_layer=get_channel_layer(bell_layer_alias()),
            metrics_port=0,  # it shares the server's process, so the server's /metrics has its figures
        )
        logger.info("event=embedded_worker worker=%s queues=%s", worker.worker_id, worker.queues)
        self.stdout.write(f"Task worker running in this process for queues: {', '.join(worker.queues)}\n")
        asyncio.ensure_future(worker.arun())
