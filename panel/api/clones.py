"""API v1 for clones and golden templates (panel/images/cloning.py does the work):
`/servers/{id}/clone/` and `/servers/{id}/make-template/` beside ServerViewSet's actions, and
`/golden-templates/`: the templates (admins; customers read the offered ones), their edit and
publish, and `/golden-templates/{id}/servers/` to create a server from one."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from panel.accounts.models import Customer
from panel.api import serializers as s
from panel.api.permissions import actor
from panel.api.views import PanelViewSet, accepted
from panel.images import cloning
from panel.images.golden import CloneOrigin, GoldenTemplate
from panel.refusals import Refused
from panel.vps.models import Plan, VirtualServer, hostname_validator


class CloneSerializer(serializers.Serializer):
    hostname = serializers.CharField(max_length=253, validators=[hostname_validator])
    mode = serializers.ChoiceField(choices=CloneOrigin.Mode.choices, default=CloneOrigin.Mode.THIN,
                                   help_text="thin: an overlay on a frozen copy of the source's disk; full: a copy")


class MakeTemplateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    offered = serializers.BooleanField(default=False, help_text="Customers may create servers from it")


class GoldenTemplateSerializer(serializers.ModelSerializer):
    class Meta:
        model = GoldenTemplate
        fields = ["id", "name", "server", "offered", "editing", "version", "created_at", "updated_at"]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not actor(request).is_admin:
            data.pop("server")  # the provider's server; a customer reads the template's name
        return data


class FromTemplateSerializer(serializers.Serializer):
    customer = s.TenantRelatedField(queryset=Customer.objects.all(), required=False)
    plan = s.TenantRelatedField(queryset=Plan.objects.all())
    hostname = serializers.CharField(max_length=253, validators=[hostname_validator])


class ServerCloneViewSet(PanelViewSet):
    """`/servers/{id}/clone|make-template/`: detail actions only, beside ServerViewSet's."""

    queryset = VirtualServer.objects.all()
    serializer_class = CloneSerializer

    @extend_schema(request=CloneSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def clone(self, request, pk=None):
        """Clone the stopped server into a new one (new UUID, MACs, hostname, addresses)."""
        data = CloneSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _server, op = cloning.request_clone(actor(request), pk, **data.validated_data)
        return accepted(request, op)

    @extend_schema(request=MakeTemplateSerializer, responses={201: GoldenTemplateSerializer})
    @action(detail=True, methods=["post"], url_path="make-template")
    def make_template(self, request, pk=None):
        """Turn the stopped server into a golden template (admins): it can no longer be started or changed."""
        data = MakeTemplateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        template = cloning.make_template(actor(request), pk, **data.validated_data)
        return Response(GoldenTemplateSerializer(template, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)


class GoldenTemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    queryset = GoldenTemplate.objects.all()
    serializer_class = GoldenTemplateSerializer
    filterset_fields = ["offered", "editing"]

    def get_queryset(self):
        return cloning.offered_templates(actor(self.request))

    def _answer(self, request, template):
        return Response(GoldenTemplateSerializer(template, context={"request": request}).data)

    @extend_schema(request=s.EmptySerializer, responses={200: GoldenTemplateSerializer})
    @action(detail=True, methods=["post"])
    def edit(self, request, pk=None):
        """Unlock the template's server to change it (admins); publish makes it the next version."""
        return self._answer(request, cloning.edit_template(actor(request), pk))

    @extend_schema(request=s.EmptySerializer, responses={200: GoldenTemplateSerializer})
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        """Lock the edited, stopped server again as the template's next version (admins)."""
        return self._answer(request, cloning.publish_template(actor(request), pk))

    def destroy(self, request, pk=None):
        """The template goes (admins); its server becomes an ordinary server."""
        cloning.delete_template(actor(request), pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=FromTemplateSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def servers(self, request, pk=None):
        """Create a server: a thin clone of the template's current version."""
        data = FromTemplateSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        v = data.validated_data
        who = actor(request)
        customer = v.get("customer")
        if customer is None:
            if who.acts_for_all_customers:
                raise Refused("customer: this field is required.", "invalid", 400, field="customer")
            customer = Customer.objects.get(pk=who.customer_id)
        self.get_object()  # another's or an unoffered template is a 404
        _server, op = cloning.create_from_template(who, pk, customer=customer, plan=v["plan"], hostname=v["hostname"])
        return accepted(request, op)
