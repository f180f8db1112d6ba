from django.core.management.base import BaseCommand

from reports.cleanup import remove_expired


class Command(BaseCommand):
    help = "Remove export files and charts past their expiry, and parts of jobs that will not finish."

    def handle(self, *args, **options) -> None:
        count = remove_expired()
        self.stdout.write(f"Cleaned up {count} job(s).")
