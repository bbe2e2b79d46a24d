from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from panel.accounts import audit
from panel.accounts.models import ApiKey, Customer
from panel.accounts.tenancy import SYSTEM


class Command(BaseCommand):
    help = "Create an API key; the key is printed as the last line (shown once, stored hashed)."

    def add_arguments(self, parser):
        parser.add_argument("--scope", required=True, choices=[s.value for s in ApiKey.Scope])
        parser.add_argument("--customer", type=int, help="customer id (scope customer)")
        parser.add_argument("--name", required=True)

    def handle(self, *args, scope, customer, name, **options):
        customer_obj = None
        if customer is not None:
            customer_obj = Customer.objects.filter(pk=customer).first()
            if customer_obj is None:
                raise CommandError(f"no customer with id {customer}")
        probe = ApiKey(name=name, scope=scope, customer=customer_obj)
        try:
            probe.clean()
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages))
        key, raw = ApiKey.issue(name=name, scope=scope, customer=customer_obj)
        audit.record(SYSTEM, "api_key.create", key, scope=scope, via="manage.py")
        self.stdout.write(f"created API key {key.id} ({scope}) — store it now, it is not shown again:")
        self.stdout.write(raw)
