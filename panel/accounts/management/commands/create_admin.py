import secrets

from django.core.management.base import BaseCommand
from django.db import transaction

from panel.accounts.models import User
from panel.vps.models import Plan

# The quick start's first plan: fits the demo OS (templates_os/catalog/tiny, 1 GiB minimum disk) on a
# small host. No bandwidth or traffic limit: shaping needs tc on the node, which a fresh host may lack.
STARTER_PLAN = {"name": "Starter", "vcpus": 1, "ram_mib": 512, "disk_gib": 2, "traffic_gib": 0, "bandwidth_mbit": 0,
                "ipv4_count": 1, "ipv6_count": 0}


def ensure_starter_plan():
    """Create the starter plan when the panel has no plan at all; None when it has one already."""
    with transaction.atomic():
        if Plan.objects.select_for_update().exists():
            return None
        return Plan.objects.create(**STARTER_PLAN)


class Command(BaseCommand):
    help = ("Create the provider admin account (or reset its password) and print the password; "
            "and a starter plan when there is no plan yet.")

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--reset", action="store_true", help="set a new password if the user exists")
        parser.add_argument("--no-starter-plan", action="store_true", help="do not create the starter plan")

    def handle(self, *args, username, reset, no_starter_plan, **options):
        # First: the admin login stays the last line printed (tests/e2e read it from there).
        if not no_starter_plan:
            plan = ensure_starter_plan()
            if plan is not None:
                self.stdout.write(f"starter plan {plan.name!r}: {plan.vcpus} vCPU, {plan.ram_mib} MiB RAM, "
                                  f"{plan.disk_gib} GiB disk")
        user = User.objects.filter(username=username).first()
        if user and not reset:
            self.stdout.write(f"admin {username!r} exists (use --reset for a new password)")
            return
        password = secrets.token_urlsafe(12)
        if user is None:
            user = User(username=username, role=User.Role.ADMIN, is_superuser=True, is_staff=True)
        user.set_password(password)
        user.save()
        self.stdout.write(f"admin login: {username} / {password}")
