import django_filters
from django.utils.translation import gettext as _
from rest_framework.settings import api_settings
from django import forms
from django.db import models
from django_filters.rest_framework import DjangoFilterBackend

from panel.accounts.models import ApiKey, AuditEntry, Customer
from panel.vps.models import Operation, VirtualServer
from panel.refusals import Refused


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


# -- query parameters a list does not know ---------------------------------------------------
# A misspelt filter (`?adress=`) was ignored, so the list answered with every row: a billing
# script that acts on the answer acted on everything. Every GET of the API names only query
# parameters its view knows (panel.api.views.PanelViewSet.filter_queryset).

def known_parameters(view, queryset) -> tuple[set[str], set[str]]:
    """(the view's filters, the other query parameters it takes: pagination, `format`, and
    search or ordering where a view has those backends)."""
    filters, others = set(), {api_settings.URL_FORMAT_OVERRIDE}
    for backend_class in view.filter_backends:
        backend = backend_class()
        if hasattr(backend, "get_filterset_class"):
            filterset = backend.get_filterset_class(view, queryset)
            filters |= set(filterset.base_filters) if filterset is not None else set()
        others |= {getattr(backend, name) for name in ("search_param", "ordering_param") if hasattr(backend, name)}
    if getattr(view, "paginator", None) is not None:
        others |= {getattr(view.paginator, name, None) for name in (
            "page_query_param", "page_size_query_param", "limit_query_param", "offset_query_param",
            "cursor_query_param")}
    return filters, others - {None}


def refuse_unknown_parameters(request, view, queryset) -> None:
    """Refused (400 `unknown_filter`, naming the parameter) for a query parameter the view does
    not know; nothing is listed or changed."""
    filters, others = known_parameters(view, queryset)
    unknown = sorted(set(request.query_params) - filters - others)
    if unknown:
        known = ", ".join(sorted(filters)) or _("nothing")
        raise Refused(_("Unknown filter %(name)s: this list filters by %(known)s.")
                      % {"name": unknown[0], "known": known}, "unknown_filter", 400, field=unknown[0])


def refuse_unknown_write_parameters(request, known: frozenset[str]) -> None:
    """The same for a write: it takes only the query parameters its action reads (`known`) and
    `format`; `DELETE /servers/{id}/?keep_backup=1` (misspelt) deleted the backups too."""
    unknown = sorted(set(request.query_params) - known - {api_settings.URL_FORMAT_OVERRIDE})
    if unknown:
        raise Refused(_("Unknown query parameter %(name)s: this operation takes %(known)s.")
                      % {"name": unknown[0], "known": ", ".join(sorted(known)) or _("none")},
                      "unknown_filter", 400, field=unknown[0])
