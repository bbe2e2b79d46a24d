import django_filters
from django import forms
from django.db import models
from django_filters.rest_framework import DjangoFilterBackend

from panel.accounts.models import ApiKey, AuditEntry, Customer
from panel.vps.models import Operation, VirtualServer


# Related ids are filtered as plain numbers: a choice filter would check the id against all
# rows and so tell a customer which other customers' ids exist (400 vs an empty list).
class IdFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField  # "5.5" is a bad id, not server 5


class PanelFilterSet(django_filters.FilterSet):
    """Every related field, declared or from `filterset_fields`, filters by plain id: another
    customer's object and a missing one both give an empty list."""

    FILTER_DEFAULTS = {**django_filters.FilterSet.FILTER_DEFAULTS,
                       models.ForeignKey: {"filter_class": IdFilter},
                       models.OneToOneField: {"filter_class": IdFilter}}


class PanelFilterBackend(DjangoFilterBackend):
    """The API's filter backend (settings.REST_FRAMEWORK): `filterset_fields` become PanelFilterSets."""

    filterset_base = PanelFilterSet


class ServerFilter(PanelFilterSet):
    customer = IdFilter(field_name="customer_id")
    node = IdFilter(field_name="node_id")
    customer__external_id = django_filters.CharFilter(field_name="customer__external_id")

    class Meta:
        model = VirtualServer
        fields = ["customer", "customer__external_id", "state", "node"]


class CustomerFilter(PanelFilterSet):
    class Meta:
        model = Customer
        fields = ["external_id", "email"]


class OperationFilter(PanelFilterSet):
    server = IdFilter(field_name="server_id")
    customer = IdFilter(field_name="customer_id")

    class Meta:
        model = Operation
        fields = ["server", "status", "kind", "customer"]


class ApiKeyFilter(PanelFilterSet):
    customer = IdFilter(field_name="customer_id")

    class Meta:
        model = ApiKey
        fields = ["scope", "customer"]


class AuditFilter(PanelFilterSet):
    class Meta:
        model = AuditEntry
        fields = ["action", "object_type", "object_id", "user", "customer"]

