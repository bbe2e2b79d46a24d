"""API v1 for alerts: `/api/v1/alerts/` (read, scoped) and `/api/v1/alert-rules/` (rules).

Customers see the alerts about their servers that are theirs to see and manage their own
rules; another customer's alert or rule is a 404. Admins see everything, tune the built-in
rules (PATCH: thresholds, duration, hysteresis, enabled) and may manage customers' rules;
billing keys manage customers' rules but never see the built-in ones.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.translation import gettext as _
from rest_framework import mixins, serializers

from panel.accounts.models import Customer
from panel.alerts import rules
from panel.alerts.models import CUSTOMER_KINDS, Alert, Rule
from panel.api.permissions import actor
from panel.api.serializers import PanelModelSerializer, TenantRelatedField
from panel.api.views import AuditedModelViewSet, PanelViewSet
from panel.refusals import Refused
from panel.vps.models import VirtualServer

MAX_RULES_PER_CUSTOMER = 50
# What a built-in rule's PATCH may change.
TUNABLE = {"enabled", "warning", "critical", "for_minutes", "margin", "resolve_after", "notify_customer"}


class AlertSerializer(PanelModelSerializer):
    kind = serializers.CharField(source="rule.kind", read_only=True)
    name = serializers.SerializerMethodField()
    unit = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = ["id", "rule", "kind", "name", "state", "severity", "subject", "summary", "server", "value",
                  "threshold", "unit", "labels", "fingerprint", "started_at", "fired_at", "resolved_at"]
        read_only_fields = fields

    def get_name(self, obj) -> str:
        from panel.alerts.delivery import alert_name

        return alert_name(obj)

    def get_unit(self, obj) -> str:
        return rules.unit(obj.rule.kind)


class RuleSerializer(PanelModelSerializer):
    builtin = serializers.BooleanField(source="is_builtin", read_only=True)
    server = TenantRelatedField(queryset=VirtualServer.objects.all(), required=False, allow_null=True)
    customer = TenantRelatedField(queryset=Customer.objects.all(), required=False, allow_null=True,
                                  help_text="Admins and billing keys: whose rule (required for them)")
    kind = serializers.ChoiceField(choices=[(k.value, k.label) for k in CUSTOMER_KINDS])
    unit = serializers.SerializerMethodField()

    class Meta:
        model = Rule
        fields = ["id", "kind", "builtin", "name", "customer", "server", "enabled", "warning", "critical",
                  "for_minutes", "margin", "resolve_after", "notify_customer", "email", "unit", "created_at",
                  "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def get_unit(self, obj) -> str:
        return rules.unit(obj.kind)

    def get_fields(self):
        fields = super().get_fields()
        if isinstance(self.instance, Rule) and self.instance.is_builtin:
            fields["kind"] = serializers.CharField(read_only=True)
        return fields

    def validate(self, attrs):
        instance = self.instance
        who = actor(self.context["request"])
        if instance is not None and instance.is_builtin:
            fixed = sorted(set(self.initial_data) - TUNABLE)
            if fixed:
                raise serializers.ValidationError({name: [_("A built-in rule's %(field)s cannot change.") % {
                    "field": name}] for name in fixed})
        elif instance is None:
            if who.acts_for_all_customers:
                if attrs.get("customer") is None:
                    raise serializers.ValidationError({"customer": [_("Name the customer whose rule it is.")]})
            else:
                attrs["customer"] = Customer.objects.filter(pk=who.customer_id).first()
                if attrs["customer"] is None:
                    raise Refused(_("Your user belongs to no customer."), "permission_denied", 403)
            if not attrs.get("email") and "email" not in self.initial_data:
                attrs["email"] = attrs["customer"].email
            if Rule.objects.filter(customer=attrs["customer"]).count() >= MAX_RULES_PER_CUSTOMER:
                raise Refused(_("At most %(n)s alert rules per customer.") % {"n": MAX_RULES_PER_CUSTOMER},
                              "limit_reached", 409)
        elif "customer" in attrs and attrs["customer"] != instance.customer:
            raise serializers.ValidationError({"customer": [_("A rule stays with its customer.")]})
        if not who.is_admin and "notify_customer" in self.initial_data:
            raise serializers.ValidationError({"notify_customer": [_("Only built-in rules have it.")]})
        probe = Rule(**{**({f.name: getattr(instance, f.name) for f in Rule._meta.concrete_fields} if instance else {}),
                        **{k: v for k, v in attrs.items()}})
        probe.customer_id = attrs["customer"].pk if attrs.get("customer") else (instance.customer_id if instance else None)
        try:
            probe.clean()  # the model's invariants, the same for the UI and the API
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict)
        return attrs


class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    """Alerts, newest first: open ones and the history. Filters: `state`, `severity`, `server`."""

    queryset = Alert.objects.select_related("rule").order_by("-id")
    serializer_class = AlertSerializer
    filterset_fields = ["state", "severity", "server"]


class RuleViewSet(AuditedModelViewSet):
    """Alert rules: customers' own (create, change, delete) and, for admins, the built-in ones
    (change only)."""

    queryset = Rule.objects.order_by("id")
    serializer_class = RuleSerializer
    filterset_fields = ["kind", "server", "enabled"]
    audit_name = "alert_rule"

    def perform_destroy(self, instance):
        if instance.is_builtin:
            raise Refused(_("Built-in rules cannot be deleted; disable it instead."), "builtin_rule", 409)
        super().perform_destroy(instance)

    def perform_update(self, serializer):
        if serializer.instance.is_builtin and not actor(self.request).is_admin:
            raise Refused(_("Only provider admins tune the built-in rules."), "permission_denied", 403)
        super().perform_update(serializer)
