"""API v1 for the ISO library (/isos/) and a server's boot media (/servers/{id}/attach-iso/,
detach-iso/, rescue/, unrescue/). Every request goes through panel.images.isos."""

from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from panel.accounts.models import Customer
from panel.api import serializers as s
from panel.api.permissions import actor
from panel.api.views import PanelViewSet, accepted
from panel.images import isos
from panel.images.isos import Iso
from panel.refusals import Refused
from panel.vps.models import VirtualServer


class IsoSerializer(serializers.ModelSerializer):
    class Meta:
        model = Iso
        fields = ["id", "name", "customer", "public", "size_bytes", "sha256", "created_at"]
        read_only_fields = fields


class AttachIsoSerializer(serializers.Serializer):
    iso = serializers.IntegerField(help_text="An ISO of the server's customer, or a public one of the provider")


def _chunks(stream):
    while True:
        chunk = stream.read(isos.CHUNK)
        if not chunk:
            return
        yield chunk


class IsoViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, PanelViewSet):
    """The ISO library: a customer's own ISOs and the provider's public ones."""

    queryset = Iso.objects.all()
    serializer_class = IsoSerializer
    filterset_fields = ["name", "customer", "public"]
    action_parameters = {"upload": frozenset({"name", "public", "customer"})}

    def get_queryset(self):
        return isos.visible_isos(actor(self.request))

    @extend_schema(request={"application/octet-stream": bytes}, responses={201: IsoSerializer}, parameters=[
        OpenApiParameter("name", str, required=True),
        OpenApiParameter("public", bool, description="Admins: offer it to every customer"),
        OpenApiParameter("customer", int, description="Admins: upload it as this customer's own")])
    @action(detail=False, methods=["put"])
    def upload(self, request):
        """Upload an ISO: the raw image as the body (streamed to the share, checksummed)."""
        who = actor(request)
        q = request.query_params
        customer = None
        if q.get("customer"):
            if not who.acts_for_all_customers:
                raise Refused(_("Only the provider names the owner."), "permission_denied", 403,
                              field="customer")
            customer = Customer.objects.filter(pk=q["customer"]).first() if q["customer"].isdigit() else None
            if customer is None:
                raise Refused(_("Unknown customer."), "invalid", 400, field="customer")
        length = request.META.get("CONTENT_LENGTH")
        # The WSGI/ASGI request's own stream: DRF's parsers never read (or hold) the body.
        iso = isos.store_upload(who, _chunks(request._request), q.get("name", ""),
                                length=int(length) if (length or "").isdigit() else None,
                                public=q.get("public", "").lower() in ("1", "true"), customer=customer)
        return Response(IsoSerializer(iso).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        isos.delete_iso(actor(request), pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ServerMediaViewSet(PanelViewSet):
    """`/servers/{id}/attach-iso|detach-iso|rescue|unrescue/`: boot a stopped server from an ISO,
    in rescue mode, or normally again, beside ServerViewSet."""

    queryset = VirtualServer.objects.all()
    serializer_class = s.EmptySerializer

    def _boot(self, request, pk, name, serializer_class=s.EmptySerializer):
        body = serializer_class(data=request.data)
        body.is_valid(raise_exception=True)
        return accepted(request, isos.request_boot(actor(request), pk, name, body.validated_data.get("iso")))

    @extend_schema(request=AttachIsoSerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="attach-iso")
    def attach_iso(self, request, pk=None):
        """Attach an ISO as a CD-ROM and start the stopped server from it."""
        return self._boot(request, pk, "attach-iso", AttachIsoSerializer)

    @extend_schema(request=s.EmptySerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"], url_path="detach-iso")
    def detach_iso(self, request, pk=None):
        """Detach the ISO and start the stopped server from its disk."""
        return self._boot(request, pk, "detach-iso")

    @extend_schema(request=s.EmptySerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def rescue(self, request, pk=None):
        """Start the stopped server in rescue mode: the rescue system with the server's disk attached."""
        return self._boot(request, pk, "rescue")

    @extend_schema(request=s.EmptySerializer, responses={202: s.AcceptedSerializer})
    @action(detail=True, methods=["post"])
    def unrescue(self, request, pk=None):
        """Leave rescue mode: start the stopped server normally again."""
        return self._boot(request, pk, "unrescue")
