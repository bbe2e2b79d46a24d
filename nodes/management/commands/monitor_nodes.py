from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Watch node health forever (runpanel starts this)."

    def handle(self, *args, **options):
        from nodes.health import Monitor

        Monitor().forever()
