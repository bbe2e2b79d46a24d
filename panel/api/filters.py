import django_filters

from panel.accounts.models import AuditEntry, Customer
from panel.vps.models import Operation, VirtualServer


class ServerFilter(django_filters.FilterSet):
    customer__external_id = django_filters.CharFilter(field_name="customer__external_id")

    class Meta:
        model = VirtualServer
        fields = ["customer", "customer__external_id", "state", "node"]


class CustomerFilter(django_filters.FilterSet):
    class Meta:
        model = Customer
        fields = ["external_id", "email"]


class OperationFilter(django_filters.FilterSet):
    class Meta:
        model = Operation
        fields = ["server", "status", "kind", "customer"]


class AuditFilter(django_filters.FilterSet):
    class Meta:
        model = AuditEntry
        fields = ["action", "object_type", "object_id", "user", "customer"]
