from channels.management.commands.runworker import Command as ChannelsRunworkerCommand

from tasks.worker import TaskWorker


class Command(ChannelsRunworkerCommand):
    """channels' runworker, with the worker that runs task queues safely.

    `python manage.py runworker thumbnails notifications compute default`
    """

    help = "Run a worker for the given channels; task queues' channels run their tasks."
    worker_class = TaskWorker
