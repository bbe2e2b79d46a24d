from django.core.management.base import BaseCommand

from panel.metrics.collector import collect, collect_filesystems


class Command(BaseCommand):
    help = "Read every node's statistics into monitoring and billing now (the worker does it every minute)."

    def add_arguments(self, parser):
        parser.add_argument("--filesystems", action="store_true",
                            help="Also ask the guest agents for their filesystems (the worker: every 15 minutes).")

    def handle(self, *args, **options):
        result = collect(wait=120)  # after the worker's minute, if it is running
        self.stdout.write(f"read {result['nodes']} nodes in {result['seconds']} s, {result['servers']} servers; "
                          f"failed nodes: {', '.join(result['failed_nodes']) or 'none'}")
        if options["filesystems"]:
            self.stdout.write(f"filesystems of {collect_filesystems()} servers")
