import functools

from channels.management.commands.runworker import Command as ChannelsRunworkerCommand
from django.core.management.base import CommandError

from tasks.backends import bell_layer_alias, task_queues
from tasks.worker import TaskWorker, slots_per_queue


class Command(ChannelsRunworkerCommand):
    """channels' runworker, with the worker that runs task queues safely.

    `python manage.py runworker thumbnails notifications compute default`
    `python manage.py runworker --concurrency notifications=16,compute=1 notifications compute`
    """

    help = "Run a worker for the given channels; task queues' channels run their tasks."
    worker_class = TaskWorker

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        # Bells ring on the task backend's layer (CHANNEL_LAYERS["tasks"]), so listen there.
        parser.set_defaults(layer=bell_layer_alias())
        parser.add_argument(
            "--concurrency",
            default="",
            help="Slots (tasks run at once) per queue: N for every queue, or queue=N,queue=N. "
            "Overrides TASKS_CONCURRENCY and the settings.",
        )
        parser.add_argument(
            "--metrics-port", type=int, default=None,
            help="Serve this process's Prometheus metrics on this port (on METRICS_ADDR; 0: none). "
            "Overrides METRICS_PORT.",
        )  # fmt: skip

    def handle(self, *args, **options) -> None:
        if options["concurrency"]:
            try:
                slots_per_queue(list(task_queues()), options["concurrency"])
            except ValueError as exc:
                raise CommandError(f"--concurrency: {exc}") from None
        self.worker_class = functools.partial(
            TaskWorker, concurrency=options["concurrency"], metrics_port=options["metrics_port"]
        )
        super().handle(*args, **options)
