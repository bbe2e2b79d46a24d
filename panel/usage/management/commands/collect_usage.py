from django.core.management.base import BaseCommand

from panel.usage.collector import collect_all


class Command(BaseCommand):
    help = "Read every running server's counters into usage now (the worker does it every minute)."

    def handle(self, *args, **options):
        result = collect_all()
        self.stdout.write(f"sampled {result['sampled']} servers; throttled {result['throttled']}, "
                          f"lifted {result['lifted']}; failed nodes: {', '.join(result['failed_nodes']) or 'none'}")
