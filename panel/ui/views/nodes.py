"""The provider admin area's nodes, clusters and storages.

Every change goes through nodes/actions.py (the same functions as the API), so the audit log,
the install Operation and the refusals are the API's; the views only turn refusals into
messages or form errors.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.contrib import messages
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from nodes import actions as node_actions
from nodes.models import Cluster, Node, Storage
from nodes.placement import disk_storage
from panel.accounts import audit
from panel.ui.forms import AcceptHostKeyForm, ClusterForm, NodeAddForm, StorageForm
from panel.ui.templatetags.ui_extras import mib
from panel.ui.views.common import actor, admin_only, form_changes, paginate
from panel.refusals import Refused
from panel.vps.models import ServerState


# --- Allocation figures for the tables -------------------------------------------------------

def ratio_text(value) -> str:
    """4.00 → "4", 1.50 → "1.5"."""
    return format(Decimal(value).normalize(), "f")


@dataclass
class Usage:
    """One usage bar: `used` of `total`, with the words shown next to it."""

    label: str
    used: int
    total: int
    text: str
    title: str = ""

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.total)) if self.total else 0

    @property
    def low(self) -> float:
        return round(self.total * 0.75, 2)

    @property
    def high(self) -> float:
        return round(self.total * 0.9, 2)


def node_usage(node: Node) -> dict:
    """vCPU, RAM and disk (per storage) use of a node as the placement sees it."""
    cluster = node.cluster
    cpu_ratio = cluster.cpu_overcommit if cluster else Decimal(1)
    ram_ratio = cluster.ram_overcommit if cluster else Decimal(1)
    vcpu_total = int(node.cpus * cpu_ratio)
    ram_total = int(node.ram_mib * ram_ratio)
    vcpu = Usage(_("vCPUs"), node.alloc_vcpus, vcpu_total, f"{node.alloc_vcpus} / {vcpu_total}",
                 _("%(cpus)s CPUs × %(ratio)s over-commit") % {"cpus": node.cpus, "ratio": ratio_text(cpu_ratio)})
    ram = Usage(_("RAM"), node.alloc_ram_mib, ram_total, f"{mib(node.alloc_ram_mib)} / {mib(ram_total)}",
                _("%(ram)s × %(ratio)s over-commit") % {"ram": mib(node.ram_mib), "ratio": ratio_text(ram_ratio)})
    disks = []
    storages = list(cluster.storages.all()) if cluster else []
    for_disks = disk_storage(node) if cluster else None
    for storage in storages:
        capacity = node.storage_capacity.get(str(storage.id)) or {}
        total, free = int(capacity.get("total_gib", 0)), int(capacity.get("free_gib", 0))
        # Disks are allocated on the cluster's disk storage; other storages show what is used.
        used = node.alloc_disk_gib if for_disks and storage.pk == for_disks.pk else max(total - free, 0)
        disks.append(Usage(storage.name, used, total,
                           _("%(used)s / %(total)s GiB") % {"used": used, "total": total},
                           _("%(free)s GiB free on the node") % {"free": free} if capacity else _("not measured yet")))
    return {"vcpu": vcpu, "ram": ram, "disks": disks, "cpu_ratio": ratio_text(cpu_ratio),
            "ram_ratio": ratio_text(ram_ratio)}


def nodes_with_usage(nodes) -> list[Node]:
    nodes = list(nodes)
    for node in nodes:
        node.usage = node_usage(node)
    return nodes


def annotated_nodes():
    """Nodes with their server and open-drift counts, for the tables."""
    return Node.objects.select_related("cluster").prefetch_related("cluster__storages").annotate(
        server_count=Count("servers", filter=~Q(servers__state=ServerState.DELETING), distinct=True),
        drift_count=Count("drifts", filter=Q(drifts__repaired=False), distinct=True),
    ).order_by("id")


# --- Nodes -----------------------------------------------------------------------------------

@admin_only
def node_list(request):
    page = paginate(request, annotated_nodes())
    page.object_list = nodes_with_usage(page.object_list)
    return render(request, "ui/admin/node_list.html", {"page": page})


@admin_only
def node_create(request):
    form = NodeAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            node, op = node_actions.add_node(actor(request), **data)
        except Refused as refused:
            form.add_error(refused.field if refused.field in form.fields else None, refused.message)
        else:
            messages.success(request, _("Node “%(name)s” added; the installer is running.") % {"name": node.name})
            return redirect("ui:operation", operation_id=op.pk)
    return render(request, "ui/admin/node_form.html", {
        "form": form, "title": _("Add node"), "back_href": reverse("ui:admin-nodes"), "submit": _("Add and install"),
        "clusters_exist": Cluster.objects.exists(),
    })


def _node_or_404(node_id: int) -> Node:
    return get_object_or_404(Node.objects.select_related("cluster").prefetch_related("cluster__storages"), pk=node_id)


def _render_node(request, node: Node, host_key_form=None, status: int = 200):
    drifts = node.drifts.select_related("server").order_by("-id")
    show = request.GET.get("show", "open")
    if show != "all":
        drifts = drifts.filter(repaired=False)
    if node.offered_host_key and host_key_form is None:
        host_key_form = AcceptHostKeyForm()
    from nodes.capabilities import LABELS

    capabilities = [{"name": name, "label": label, **node.capabilities[name]}
                    for name, label in LABELS.items() if isinstance(node.capabilities.get(name), dict)]
    return render(request, "ui/admin/node_detail.html", {
        "node": node, "usage": node_usage(node), "capabilities": capabilities, "page": paginate(request, drifts), "show": show,
        "servers": node.servers.select_related("customer", "plan").order_by("id")[:50],
        "server_total": node.servers.count(),
        "operations": node.operations.select_related("customer", "server").order_by("-id")[:20],
        "host_key_form": host_key_form,
    }, status=status)


@admin_only
def node_detail(request, node_id: int):
    return _render_node(request, _node_or_404(node_id))


@admin_only
@require_POST
def node_install(request, node_id: int):
    node = _node_or_404(node_id)
    try:
        op = node_actions.reinstall_node(actor(request), node.pk)
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect("ui:admin-node", node_id=node.pk)
    messages.success(request, _("Re-install of “%(name)s” requested.") % {"name": node.name})
    return redirect("ui:operation", operation_id=op.pk)


@admin_only
@require_POST
def node_maintenance(request, node_id: int):
    node = _node_or_404(node_id)
    enabled = request.POST.get("enabled") == "1"
    try:
        node_actions.set_maintenance(actor(request), node.pk, enabled)
    except Refused as refused:
        messages.error(request, refused.message)
    else:
        if enabled:
            messages.success(request, _("“%(name)s” is in maintenance: no new servers are placed on it.")
                             % {"name": node.name})
        else:
            messages.success(request, _("“%(name)s” left maintenance; the next health check sets its state.")
                             % {"name": node.name})
    return redirect("ui:admin-node", node_id=node.pk)


@admin_only
@require_POST
def node_remove(request, node_id: int):
    node = _node_or_404(node_id)
    try:
        node_actions.remove_node(actor(request), node.pk)
    except Refused as refused:
        messages.error(request, refused.message)
        return redirect("ui:admin-node", node_id=node.pk)
    messages.success(request, _("Node “%(name)s” removed.") % {"name": node.name})
    return redirect("ui:admin-nodes")


@admin_only
@require_POST
def node_accept_host_key(request, node_id: int):
    node = _node_or_404(node_id)
    form = AcceptHostKeyForm(request.POST)
    if form.is_valid():
        try:
            node_actions.accept_host_key(actor(request), node.pk, form.cleaned_data["fingerprint"])
        except Refused as refused:
            if refused.code == "no_offered_key":
                messages.error(request, refused.message)
                return redirect("ui:admin-node", node_id=node.pk)
            form.add_error("fingerprint", refused.message)
        else:
            messages.success(request, _("The new host key of “%(name)s” is trusted now.") % {"name": node.name})
            return redirect("ui:admin-node", node_id=node.pk)
    return _render_node(request, node, host_key_form=form, status=400)


# --- Clusters --------------------------------------------------------------------------------

@admin_only
def cluster_list(request):
    clusters = Cluster.objects.annotate(
        node_count=Count("nodes", distinct=True),
        online_count=Count("nodes", filter=Q(nodes__state=Node.State.ONLINE), distinct=True),
        storage_count=Count("storages", distinct=True),
    ).order_by("id")
    return render(request, "ui/admin/cluster_list.html", {"page": paginate(request, clusters)})


@admin_only
def cluster_create(request):
    form = ClusterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        cluster = form.save()
        audit.record(actor(request), "cluster.create", cluster)
        messages.success(request, _("Cluster “%(name)s” created. Add its storages next.") % {"name": cluster.name})
        return redirect("ui:admin-cluster", cluster_id=cluster.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New cluster"), "back_href": reverse("ui:admin-clusters"),
        "submit": _("Create cluster"),
    })


@admin_only
def cluster_detail(request, cluster_id: int):
    cluster = get_object_or_404(Cluster, pk=cluster_id)
    storages = cluster.storages.annotate(server_count=Count("servers")).order_by("id")
    from panel.ui.views.ipam import cluster_networks

    return render(request, "ui/admin/cluster_detail.html", {
        "cluster": cluster, "storages": storages, "networks": cluster_networks(cluster),
        "nodes": nodes_with_usage(annotated_nodes().filter(cluster=cluster)),
        "cpu_ratio": ratio_text(cluster.cpu_overcommit), "ram_ratio": ratio_text(cluster.ram_overcommit),
    })


@admin_only
def cluster_edit(request, cluster_id: int):
    cluster = get_object_or_404(Cluster, pk=cluster_id)
    form = ClusterForm(request.POST or None, instance=cluster)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            audit.record(actor(request), "cluster.update", cluster,
                         **form_changes(form))
        messages.success(request, _("Cluster “%(name)s” saved.") % {"name": cluster.name})
        return redirect("ui:admin-cluster", cluster_id=cluster.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("Edit cluster %(name)s") % {"name": cluster.name},
        "back_href": reverse("ui:admin-cluster", args=[cluster.pk]), "submit": _("Save"),
        "note": _("Changed over-commit ratios apply to the next placements; servers already placed stay."),
    })


@admin_only
@require_POST
def cluster_delete(request, cluster_id: int):
    cluster = get_object_or_404(Cluster, pk=cluster_id)
    refused = cluster.delete_refusal()
    if refused is not None:
        messages.error(request, refused.message)
        return redirect("ui:admin-cluster", cluster_id=cluster.pk)
    audit.record(actor(request), "cluster.delete", cluster)
    cluster.delete()
    messages.success(request, _("Cluster “%(name)s” deleted.") % {"name": cluster.name})
    return redirect("ui:admin-clusters")


# --- Storages --------------------------------------------------------------------------------

@admin_only
def storage_create(request, cluster_id: int):
    cluster = get_object_or_404(Cluster, pk=cluster_id)
    form = StorageForm(request.POST or None, instance=Storage(cluster=cluster))
    if request.method == "POST" and form.is_valid():
        storage = form.save()
        audit.record(actor(request), "storage.create", storage)
        messages.success(request, _("Storage “%(name)s” created.") % {"name": storage.name})
        return redirect("ui:admin-cluster", cluster_id=cluster.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New storage in %(cluster)s") % {"cluster": cluster.name},
        "back_href": reverse("ui:admin-cluster", args=[cluster.pk]), "submit": _("Create storage"),
        "note": _("The storage must exist on every node of the cluster: the installer defines it as a libvirt pool."),
    })


@admin_only
def storage_edit(request, storage_id: int):
    storage = get_object_or_404(Storage.objects.select_related("cluster"), pk=storage_id)
    form = StorageForm(request.POST or None, instance=storage)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            audit.record(actor(request), "storage.update", storage,
                         **form_changes(form))
        messages.success(request, _("Storage “%(name)s” saved.") % {"name": storage.name})
        return redirect("ui:admin-cluster", cluster_id=storage.cluster_id)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("Edit storage %(name)s") % {"name": str(storage)},
        "back_href": reverse("ui:admin-cluster", args=[storage.cluster_id]), "submit": _("Save"),
    })


@admin_only
@require_POST
def storage_delete(request, storage_id: int):
    storage = get_object_or_404(Storage, pk=storage_id)
    refused = storage.delete_refusal()
    if refused is not None:
        messages.error(request, refused.message)
    else:
        audit.record(actor(request), "storage.delete", storage)
        storage.delete()
        messages.success(request, _("Storage “%(name)s” deleted.") % {"name": storage.name})
    return redirect("ui:admin-cluster", cluster_id=storage.cluster_id)


# --- Placement preview -----------------------------------------------------------------------

def placement_preview(plan) -> list[dict]:
    """For each node: chosen, would fit, or the filter's reason, for a server of `plan`."""
    from nodes.capabilities import needs_of
    from nodes.placement import Request, decide

    if plan is None:
        return []
    decision = decide(Request(vcpus=plan.vcpus, ram_mib=plan.ram_mib, disk_gib=plan.disk_gib, needs=needs_of(plan)),
                      explain=True)
    rows = []
    for node in Node.objects.select_related("cluster").order_by("name"):
        chosen = decision.node is not None and decision.node.pk == node.pk
        reason = decision.rejected.get(node.name, "")
        rows.append({"node": node, "chosen": chosen, "reason": reason, "fits": not chosen and not reason})
    return rows
