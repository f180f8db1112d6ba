from channels.management.commands.runworker import Command as ChannelsRunworkerCommand

from tasks.backends import bell_layer_alias
from tasks.worker import TaskWorker


class Command(ChannelsRunworkerCommand):
    """channels' runworker, with the worker that runs task queues safely.

    `python manage.py runworker thumbnails notifications compute default`
    """

    help = "Run a worker for the given channels; task queues' channels run their tasks."
    worker_class = TaskWorker

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        # Bells ring on the task backend's layer (CHANNEL_LAYERS["tasks"]), so listen there.
        parser.set_defaults(layer=bell_layer_alias())
