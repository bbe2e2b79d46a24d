import django_filters

from panel.accounts.models import ApiKey, AuditEntry, Customer
from panel.vps.models import Operation, VirtualServer


# Related ids are filtered as plain numbers: a choice filter would check the id against all
# rows and so tell a customer which other customers' ids exist (400 vs an empty list).


class ServerFilter(django_filters.FilterSet):
    customer = django_filters.NumberFilter(field_name="customer_id")
    node = django_filters.NumberFilter(field_name="node_id")
    customer__external_id = django_filters.CharFilter(field_name="customer__external_id")

    class Meta:
        model = VirtualServer
        fields = ["customer", "customer__external_id", "state", "node"]


class CustomerFilter(django_filters.FilterSet):
    class Meta:
        model = Customer
        fields = ["external_id", "email"]


class OperationFilter(django_filters.FilterSet):
    server = django_filters.NumberFilter(field_name="server_id")
    customer = django_filters.NumberFilter(field_name="customer_id")

    class Meta:
        model = Operation
        fields = ["server", "status", "kind", "customer"]


class ApiKeyFilter(django_filters.FilterSet):
    customer = django_filters.NumberFilter(field_name="customer_id")

    class Meta:
        model = ApiKey
        fields = ["scope", "customer"]


class AuditFilter(django_filters.FilterSet):
    class Meta:
        model = AuditEntry
        fields = ["action", "object_type", "object_id", "user", "customer"]
