"""API v1 for webhooks: `/api/v1/webhooks/`, their deliveries and re-sends (API.md)."""

import secrets

import django_filters
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from panel import limits
from panel.accounts.models import Customer
from panel.api.models import Event
from panel.api.permissions import actor
from panel.api.views import PanelViewSet
from panel.refusals import Refused
from panel.webhooks import delivery as delivery_actions
from panel.webhooks import destinations
from panel.webhooks.models import ALL_EVENTS, Delivery, Webhook


@extend_schema_field({"oneOf": [{"type": "array", "items": {"type": "string", "enum": [ALL_EVENTS, *Event.NAMES]}},
                                {"type": "string", "enum": [ALL_EVENTS]}]})
class EventsField(serializers.Field):
    """A list of event names, or "*" (also as ["*"]) for every event."""

    default_error_messages = {
        "type": gettext_lazy("A list of event names, or “*”."),
        "empty": gettext_lazy("Name at least one event, or “*”."),
        "unknown": gettext_lazy("Unknown event: {names}. Valid: {valid}."),
    }

    def to_internal_value(self, data):
        if data == ALL_EVENTS:
            data = [ALL_EVENTS]
        if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
            self.fail("type")
        if not data:
            self.fail("empty")
        unknown = [name for name in data if name != ALL_EVENTS and name not in Event.NAMES]
        if unknown:
            self.fail("unknown", names=", ".join(unknown), valid=", ".join([ALL_EVENTS, *Event.NAMES]))
        return [ALL_EVENTS] if ALL_EVENTS in data else list(dict.fromkeys(data))

    def to_representation(self, value):
        return list(value)


class WebhookSerializer(serializers.ModelSerializer):
    events = EventsField()
    secret = serializers.CharField(write_only=True, required=False, min_length=16, max_length=200,
                                   trim_whitespace=False, style={"input_type": "password"},
                                   help_text="Signs every delivery; never shown again. Omitted: one is generated "
                                             "and returned once in this answer")

    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "secret", "customer", "active", "created_at"]
        read_only_fields = ["customer", "created_at"]
        extra_kwargs = {"active": {"required": False}}

    def validate_url(self, value: str) -> str:
        try:
            destinations.parse(value)
        except destinations.BadUrl as exc:
            raise serializers.ValidationError(str(exc))
        return value.strip()

    def validate(self, attrs):
        scope = self.context["scope"]  # who makes it: Webhook.Scope
        if scope not in settings.WEBHOOKS_ALLOW_PRIVATE and "url" in attrs:
            # A name that resolves to a private address is refused now; one that does not resolve
            # yet (its DNS still being set up) is not: every send checks what it resolves to then.
            try:
                destinations.resolve(destinations.parse(attrs["url"]), public_only=True)
            except destinations.Forbidden as exc:
                raise serializers.ValidationError({"url": [str(exc)]})
            except destinations.Unresolvable:
                pass
        probe = Webhook(url=attrs.get("url", ""), events=attrs.get("events", []))
        try:
            probe.clean()  # the model's invariants, the same for the UI and the API
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict)
        return attrs


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(read_only=True, required=False,
                                   help_text="Only when the panel generated it: shown this once, never again")


class DeliverySerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True, help_text="The `id` in the delivered body")
    event = serializers.CharField(source="event.event", read_only=True)
    event_id = serializers.IntegerField(read_only=True)
    event_created_at = serializers.DateTimeField(source="event.created_at", read_only=True)

    class Meta:
        model = Delivery
        fields = ["id", "webhook", "event", "event_id", "event_created_at", "status", "attempts", "next_attempt_at",
                  "last_attempt_at", "last_status_code", "last_error", "delivered_at", "give_up_at", "created_at"]
        read_only_fields = fields


class WebhookFilter(django_filters.FilterSet):
    # A plain number, not a choice: no telling a customer which other customers exist.
    customer = django_filters.NumberFilter(field_name="customer_id")

    class Meta:
        model = Webhook
        fields = ["customer", "active"]


class WebhookViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                     mixins.DestroyModelMixin, PanelViewSet):
    """Webhooks: admins and billing keys see all and receive every event; a customer sees and
    manages only its own, which receive only events about its objects."""

    queryset = Webhook.objects.order_by("id")
    serializer_class = WebhookSerializer
    filterset_class = WebhookFilter
    secret_response_fields = ("secret",)  # a replayed create does not show a generated secret again

    def _owner(self) -> int | None:
        who = actor(self.request)
        return None if who.acts_for_all_customers else who.customer_id

    def _scope(self) -> str:
        who = actor(self.request)
        if who.is_admin:
            return Webhook.Scope.ADMIN
        return Webhook.Scope.BILLING if who.is_billing else Webhook.Scope.CUSTOMER

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "scope": self._scope()}

    @extend_schema(responses={201: WebhookCreatedSerializer})
    def create(self, request):
        owner = self._owner()
        if owner is not None and not Customer.objects.filter(pk=owner).exists():
            raise Refused(_("Your user belongs to no customer."), "permission_denied", 403)
        data = self.get_serializer(data=request.data)
        data.is_valid(raise_exception=True)
        limits.check_new_webhook(actor(request), owner)
        values = dict(data.validated_data)
        given = values.pop("secret", None)
        secret = given or secrets.token_urlsafe(32)
        hook = Webhook(customer_id=owner, scope=self._scope(), **values)
        hook.secret = secret
        hook.save()
        self.audit("webhook.create", hook, url=hook.url, events=hook.events)
        body = WebhookSerializer(hook).data
        if given is None:
            body["secret"] = secret
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        self.audit("webhook.delete", instance, url=instance.url)
        instance.delete()

    @extend_schema(responses={200: DeliverySerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        """This webhook's deliveries, newest first."""
        hook = self.get_object()
        rows = hook.deliveries.select_related("event").order_by("-id")
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: DeliverySerializer}, filters=False,
                   parameters=[OpenApiParameter("delivery_uuid", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                                description="The delivery's `id`")])
    @action(detail=True, methods=["post"], url_path=r"deliveries/(?P<delivery_uuid>[^/.]+)/resend")
    def resend(self, request, pk=None, delivery_uuid=None):
        """Send a delivery again now (admins and billing keys), with the same id and a fresh
        25 h of retries."""
        hook = self.get_object()  # another customer's webhook: 404 before anything else
        if not actor(request).acts_for_all_customers:
            raise Refused(_("Only the provider re-sends deliveries."), "permission_denied", 403)
        try:
            row = hook.deliveries.get(uuid=delivery_uuid)
        except (Delivery.DoesNotExist, DjangoValidationError, ValueError):
            raise Http404
        with transaction.atomic():
            row = delivery_actions.resend(row.pk)
            self.audit("webhook.resend", hook, delivery=str(row.uuid), event=row.event.event)
        return Response(DeliverySerializer(row).data, status=status.HTTP_202_ACCEPTED)
