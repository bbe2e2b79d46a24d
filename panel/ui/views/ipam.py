"""Networks (on the cluster page), IP pools and the addresses handed out from them.

Address changes go through panel/ipam/actions.py (the API's functions), so the audit log, the
`network_update` operation and the refusals are the API's; the views turn refusals into
messages or form errors in the admin's language. Reverse DNS is the one thing the owning
customer changes here, on the server page.
"""

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from nodes.models import Cluster, Network
from panel.accounts import audit
from panel.ipam import actions as ipam_actions
from panel.ipam.allocation import usage
from panel.ipam.models import IpAddress, IpPool
from panel.ui.forms import (
    IpPoolForm,
    MoveAddressForm,
    NetworkForm,
    PoolAddressForm,
    PtrForm,
    ServerAddressForm,
    servers_in_cluster,
)
from panel.ui.views.common import actor, admin_only, form_changes, paginate, safe_next
from panel.ui.views.servers import render_server_detail
from panel.refusals import Refused
from panel.vps.models import VirtualServer

# --- Refusals in the admin's language ---------------------------------------------------------


# --- Networks (listed on the cluster page) ----------------------------------------------------

def _network_note() -> str:
    return _("Nodes make a new or changed network when they are (re-)installed: re-install the cluster's "
             "nodes after saving.")


@admin_only
def network_create(request, cluster_id: int):
    cluster = get_object_or_404(Cluster, pk=cluster_id)
    form = NetworkForm(request.POST or None, instance=Network(cluster=cluster))
    if request.method == "POST" and form.is_valid():
        network = form.save()
        audit.record(actor(request), "network.create", network)
        messages.success(request, _("Network “%(name)s” created. Re-install the cluster's nodes to make it "
                                    "on them.") % {"name": network.name})
        return redirect("ui:admin-cluster", cluster_id=cluster.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New network in %(cluster)s") % {"cluster": cluster.name},
        "back_href": reverse("ui:admin-cluster", args=[cluster.pk]), "submit": _("Create network"),
        "note": _network_note(),
    })


@admin_only
def network_edit(request, network_id: int):
    network = get_object_or_404(Network.objects.select_related("cluster"), pk=network_id)
    form = NetworkForm(request.POST or None, instance=network)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            audit.record(actor(request), "network.update", network, **form_changes(form))
        messages.success(request, _("Network “%(name)s” saved.") % {"name": network.name})
        return redirect("ui:admin-cluster", cluster_id=network.cluster_id)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("Edit network %(name)s") % {"name": str(network)},
        "back_href": reverse("ui:admin-cluster", args=[network.cluster_id]), "submit": _("Save"),
        "note": _network_note(),
    })


@admin_only
@require_POST
def network_delete(request, network_id: int):
    network = get_object_or_404(Network, pk=network_id)
    refused = network.delete_refusal()
    if refused is not None:
        messages.error(request, refused.message)
    else:
        audit.record(actor(request), "network.delete", network)
        network.delete()
        messages.success(request, _("Network “%(name)s” deleted.") % {"name": network.name})
    return redirect("ui:admin-cluster", cluster_id=network.cluster_id)


def cluster_networks(cluster: Cluster):
    """The cluster page's network table: each network with its pools and NIC count."""
    return cluster.networks.annotate(nic_count=Count("nics", distinct=True)).prefetch_related("ip_pools").order_by("id")


# --- IP pools ---------------------------------------------------------------------------------

@dataclass
class PoolUsage:
    """A pool's addresses: in use, in quarantine and free, of the total handed out."""

    total: int
    used: int
    quarantined: int
    free: int

    def _percent(self, value: int) -> float:
        return round(100 * value / self.total, 1) if self.total else 0

    @property
    def used_percent(self) -> float:
        return self._percent(self.used)

    @property
    def quarantined_percent(self) -> float:
        return self._percent(self.quarantined)

    @property
    def text(self) -> str:
        return _("%(used)s used · %(quarantined)s in quarantine · %(free)s free of %(total)s") % {
            "used": self.used, "quarantined": self.quarantined, "free": self.free, "total": self.total}


def pool_usage(pool: IpPool) -> PoolUsage:
    return PoolUsage(**usage(pool))


@admin_only
def pool_list(request):
    pools = IpPool.objects.select_related("network__cluster").order_by("id")
    network = request.GET.get("network", "")
    if network.isdigit():
        pools = pools.filter(network_id=int(network))
    page = paginate(request, pools)
    for pool in page.object_list:
        pool.usage = pool_usage(pool)
    return render(request, "ui/admin/pool_list.html", {
        "page": page, "networks_exist": Network.objects.exists(),
    })


@admin_only
def pool_create(request):
    initial = {"network": request.GET.get("network")} if request.GET.get("network", "").isdigit() else None
    form = IpPoolForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        pool = form.save()
        audit.record(actor(request), "ip_pool.create", pool)
        messages.success(request, _("IP pool “%(name)s” created.") % {"name": pool.name})
        return redirect("ui:admin-pool", pool_id=pool.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New IP pool"), "back_href": reverse("ui:admin-pools"), "submit": _("Create pool"),
        "note": _("Servers get their addresses from the pools of their cluster's networks: the public (bridged) "
                  "network's pools for the plan's addresses, the private (NAT) network's for a private card."),
    })


@admin_only
def pool_edit(request, pool_id: int):
    pool = get_object_or_404(IpPool, pk=pool_id)
    form = IpPoolForm(request.POST or None, instance=pool)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            audit.record(actor(request), "ip_pool.update", pool, **form_changes(form))
        messages.success(request, _("IP pool “%(name)s” saved.") % {"name": pool.name})
        return redirect("ui:admin-pool", pool_id=pool.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("Edit IP pool %(name)s") % {"name": pool.name},
        "back_href": reverse("ui:admin-pool", args=[pool.pk]), "submit": _("Save"),
        "note": _("Addresses already handed out stay with their servers, even outside a changed range."),
    })


@admin_only
@require_POST
def pool_delete(request, pool_id: int):
    pool = get_object_or_404(IpPool, pk=pool_id)
    refused = pool.delete_refusal()
    if refused is not None:
        messages.error(request, refused.message)
        return redirect("ui:admin-pool", pool_id=pool.pk)
    audit.record(actor(request), "ip_pool.delete", pool)
    ipam_actions.delete_pool(pool)  # quarantined addresses go with it
    messages.success(request, _("IP pool “%(name)s” deleted.") % {"name": pool.name})
    return redirect("ui:admin-pools")


def _pool_or_404(pool_id: int) -> IpPool:
    return get_object_or_404(IpPool.objects.select_related("network__cluster"), pk=pool_id)


def _render_pool(request, pool: IpPool, add_form=None, status: int = 200):
    addresses = pool.addresses.select_related("server__customer").order_by("ordinal")
    show = request.GET.get("show", "")
    if show == "used":
        addresses = addresses.filter(server__isnull=False)
    elif show == "released":
        addresses = addresses.filter(server__isnull=True)
    return render(request, "ui/admin/pool_detail.html", {
        "pool": pool, "usage": pool_usage(pool), "page": paginate(request, addresses), "show": show,
        "add_form": add_form or PoolAddressForm(pool=pool),
        "servers": servers_in_cluster(pool.network.cluster_id).select_related("customer")[:500],
    }, status=status)


@admin_only
def pool_detail(request, pool_id: int):
    return _render_pool(request, _pool_or_404(pool_id))


@admin_only
@require_POST
def pool_address_add(request, pool_id: int):
    pool = _pool_or_404(pool_id)
    form = PoolAddressForm(request.POST, pool=pool)
    if form.is_valid():
        server = form.cleaned_data["server"]
        try:
            row = ipam_actions.add_address(actor(request), server.pk, pool, form.cleaned_data["address"].strip())
        except Refused as refused:
            field = refused.field if refused.field in form.fields else None
            form.add_error(field, refused.message)
        else:
            messages.success(request, _("%(address)s given to %(server)s.") % {"address": row.address,
                                                                                "server": server.hostname})
            return redirect("ui:admin-pool", pool_id=pool.pk)
    return _render_pool(request, pool, add_form=form, status=400)


# --- One address: move, release (admins) ------------------------------------------------------

def _back(request, row: IpAddress):
    return safe_next(request, request.POST.get("next"), reverse("ui:admin-pool", args=[row.pool_id]))


@admin_only
@require_POST
def address_move(request, address_id: int):
    row = get_object_or_404(IpAddress.objects.select_related("pool__network"), pk=address_id)
    form = MoveAddressForm(request.POST, cluster_id=row.pool.network.cluster_id)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors["server"]))
        return _back(request, row)
    target = form.cleaned_data["server"]
    if target.pk == row.server_id:
        messages.info(request, _("%(address)s is on %(server)s already.") % {"address": row.address,
                                                                              "server": target.hostname})
        return _back(request, row)
    try:
        ipam_actions.move_address(actor(request), row.pk, target.pk)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("%(address)s moved to %(server)s.") % {"address": row.address,
                                                                            "server": target.hostname})
    return _back(request, row)


@admin_only
@require_POST
def address_release(request, address_id: int):
    row = get_object_or_404(IpAddress.objects.select_related("pool"), pk=address_id)
    if row.server_id is None:
        messages.info(request, _("%(address)s is released already.") % {"address": row.address})
        return _back(request, row)
    try:
        ipam_actions.remove_address(actor(request), row.pk)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, _("%(address)s released; it is in quarantine for %(minutes)s minutes.")
                         % {"address": row.address, "minutes": row.pool.quarantine_minutes})
    return _back(request, row)


# --- The server page's addresses card (panel/ui/views/address_card.py) ------------------------

def _render_server(request, server: VirtualServer, status: int, **forms):
    return render_server_detail(request, server, status=status, **forms)


@admin_only
@require_POST
def server_address_add(request, server_id: int):
    server = get_object_or_404(VirtualServer.objects.select_related("node", "plan", "customer"), pk=server_id)
    form = ServerAddressForm(request.POST, server=server)
    if form.is_valid():
        pool = form.cleaned_data["pool"]
        try:
            row = ipam_actions.add_address(actor(request), server.pk, pool, form.cleaned_data["address"].strip())
        except Refused as refused:
            field = refused.field if refused.field in form.fields else None
            form.add_error(field, refused.message)
        else:
            messages.success(request, _("%(address)s added; the server's network settings are being updated.")
                             % {"address": row.address})
            return redirect("ui:server", server_id=server.pk)
    return _render_server(request, server, 400, add_form=form)


@login_required
@require_POST
def address_ptr(request, server_id: int, address_id: int):
    """Reverse DNS of an address: the owning customer's users and admins; 404 for anyone else."""
    act = actor(request)
    server = act.get_or_404(VirtualServer.objects.select_related("node", "plan", "customer"), pk=server_id)
    row = act.get_or_404(IpAddress.objects.filter(server=server), pk=address_id)
    form = PtrForm(request.POST, prefix=f"ip{row.pk}")
    if not form.is_valid():
        return _render_server(request, server, 400, ptr_forms={row.pk: form})
    ptr = form.cleaned_data["ptr"]
    if ptr != row.ptr:
        row.ptr = ptr
        row.save(update_fields=["ptr"])
        audit.record(act, "ip.ptr", row, ptr=row.ptr, customer_id=server.customer_id)
    messages.success(request, _("Reverse DNS of %(address)s saved.") % {"address": row.address})
    return redirect("ui:server", server_id=server.pk)
