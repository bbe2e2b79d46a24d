from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Compare every node's domains with the database now (the worker also does it periodically)."

    def handle(self, *args, **options):
        from panel.vps.reconciler import reconcile_all

        self.stdout.write(reconcile_all())
