import secrets

from django.core.management.base import BaseCommand

from panel.accounts.models import User


class Command(BaseCommand):
    help = "Create the provider admin account (or reset its password) and print the password."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--reset", action="store_true", help="set a new password if the user exists")

    def handle(self, *args, username, reset, **options):
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
