"""The provider admin area: customers, users, plans, nodes, servers, operations, audit log."""

from dataclasses import dataclass

from django.contrib import messages
from django.db import transaction
from django.db.models import Count, Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _

from nodes.models import Cluster, Drift, Network, Node
from panel.accounts import audit
from panel.accounts.models import AuditEntry, Customer, User
from panel.ipam.models import IpPool
from panel.refusals import Refused
from panel.ui import live
from panel.ui.forms import CustomerForm, PlanForm, ServerCreateForm, UserCreateForm
from panel.ui.views.common import actor, admin_only, form_changes, paginate
from panel.ui.views.nodes import annotated_nodes, nodes_with_usage, placement_preview
from panel.ui.views.servers import remember_password
from panel.vps import lifecycle
from panel.vps.models import Operation, Plan, ServerState, VirtualServer
from templates_os.models import OsTemplate


@dataclass(frozen=True)
class Step:
    """One item of the first-run checklist: done or not (read from the database), and where to fix it."""

    key: str
    done: bool
    label: str
    hint: str
    href: str
    action: str


def first_run_checklist() -> list[Step]:
    """What an empty panel lacks before a server can be created and sold, in the order to fix it;
    each item's link goes where it is fixed (or, once done, to its list)."""
    nodes, plans = Node.objects.exists(), Plan.objects.exists()
    pools = IpPool.objects.exists()  # a pool lies on a network: it ticks both
    customers = Customer.objects.filter(internal=False).exists()  # the internal one sells nothing
    network = Network.objects.order_by("id").first()
    cluster = (Cluster.objects.filter(nodes__state=Node.State.ONLINE).order_by("id").first()
               or Cluster.objects.order_by("id").first())
    if pools:
        pool_link = (reverse("ui:admin-pools"), _("See the IP pools"))
    elif network is not None:
        pool_link = (reverse("ui:admin-pool-create") + f"?network={network.pk}", _("Add an IP pool"))
    elif cluster is not None:
        pool_link = (reverse("ui:admin-network-create", args=[cluster.pk]), _("Add a network"))
    else:
        pool_link = (reverse("ui:admin-cluster-create"), _("Add a cluster"))
    node_link = (reverse("ui:admin-nodes"), _("See the nodes")) if nodes else (
        reverse("ui:admin-node-create"), _("Add a node"))
    plan_link = (reverse("ui:admin-plans"), _("See the plans")) if plans else (
        reverse("ui:admin-plan-create"), _("Add a plan"))
    customer_link = (reverse("ui:admin-customers"), _("See the customers")) if customers else (
        reverse("ui:admin-customer-create"), _("Add a customer"))
    return [
        Step("node", Node.objects.filter(state=Node.State.ONLINE).exists(), _("A node online"),
             _("“make run” makes this host a node; other hosts are added over SSH."), *node_link),
        Step("network", pools, _("A network with an address pool"),
             _("Servers get their addresses from it. The local node gets a NAT network with a pool by itself."),
             *pool_link),
        Step("plan", plans, _("A plan"),
             _("The size of a server: vCPUs, RAM, disk. The quick start creates a starter plan."), *plan_link),
        Step("template", OsTemplate.offered_objects.exists(), _("An offered OS template"),
             _("A valid, enabled template on the template share; “make run” lays out the demo OS."),
             reverse("ui:admin-templates"), _("See the OS templates")),
        Step("customer", customers, _("A customer"),
             _("Needed to sell servers; your own servers need none: leave the customer at “Our own (internal)”."),
             *customer_link),
    ]


@admin_only
def dashboard(request):
    servers = VirtualServer.objects.all()
    counts = {
        "customers": Customer.objects.count(),
        "servers": servers.count(),
        "running": servers.filter(state=ServerState.RUNNING).count(),
        "errors": servers.filter(state=ServerState.ERROR).count(),
        "nodes_online": Node.objects.filter(state=Node.State.ONLINE).count(),
        "nodes": Node.objects.count(),
        "active_operations": Operation.objects.filter(status__in=Operation.ACTIVE).count(),
    }
    nodes = nodes_with_usage(annotated_nodes())
    checklist = first_run_checklist()
    return render(request, "ui/admin/dashboard.html", {
        "checklist": checklist,
        "checklist_done": sum(step.done for step in checklist),
        "checklist_complete": all(step.done for step in checklist),
        "counts": counts,
        "nodes": nodes,
        "operations": Operation.objects.select_related("customer")[:10],
        "drifts": Drift.objects.filter(repaired=False).select_related("node")[:20],
    })


# --- Customers -------------------------------------------------------------------------------

@admin_only
def customer_list(request):
    customers = actor(request).restrict(Customer.objects.all()).annotate(
        server_count=Count("servers", distinct=True), user_count=Count("users", distinct=True))
    query = request.GET.get("q", "").strip()
    if query:
        customers = customers.filter(Q(name__icontains=query) | Q(email__icontains=query) | Q(external_id=query))
    return render(request, "ui/admin/customer_list.html", {"page": paginate(request, customers.order_by("id")),
                                                           "q": query})


@admin_only
def customer_create(request):
    form = CustomerForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        customer = form.save()
        audit.record(actor(request), "customer.create", customer, customer_id=customer.pk)
        messages.success(request, _("Customer “%(name)s” created.") % {"name": customer.name})
        return redirect("ui:admin-customer", customer_id=customer.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New customer"), "back_href": reverse("ui:admin-customers"), "submit": _("Create customer"),
    })


@admin_only
def customer_detail(request, customer_id: int):
    act = actor(request)
    customer = act.get_or_404(Customer.objects.all(), pk=customer_id)
    return render(request, "ui/admin/customer_detail.html", {
        "customer": customer,
        "users": customer.users.order_by("id"),
        "servers": customer.servers.select_related("plan", "node").order_by("id"),
        "keys": customer.api_keys.order_by("-id"),
    })


@admin_only
def customer_edit(request, customer_id: int):
    act = actor(request)
    customer = act.get_or_404(Customer.objects.all(), pk=customer_id)
    form = CustomerForm(request.POST or None, instance=customer)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            audit.record(act, "customer.update", customer, customer_id=customer.pk, **form_changes(form))
        messages.success(request, _("Customer “%(name)s” saved.") % {"name": customer.name})
        return redirect("ui:admin-customer", customer_id=customer.pk)
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("Edit customer %(name)s") % {"name": customer.name},
        "back_href": reverse("ui:admin-customer", args=[customer.pk]), "submit": _("Save"),
    })


# --- Users -----------------------------------------------------------------------------------

@admin_only
def user_list(request):
    users = User.objects.select_related("customer").order_by("id")
    role = request.GET.get("role", "")
    if role in User.Role.values:
        users = users.filter(role=role)
    return render(request, "ui/admin/user_list.html", {"page": paginate(request, users), "role": role,
                                                       "roles": User.Role.choices})


@admin_only
def user_create(request):
    initial = {}
    if request.GET.get("customer"):
        initial = {"customer": request.GET["customer"], "role": User.Role.CUSTOMER}
    form = UserCreateForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        audit.record(actor(request), "user.create", user, customer_id=user.customer_id, role=user.role)
        messages.success(request, _("User “%(name)s” created.") % {"name": user.username})
        if user.customer_id:
            return redirect("ui:admin-customer", customer_id=user.customer_id)
        return redirect("ui:admin-users")
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New user"), "back_href": reverse("ui:admin-users"), "submit": _("Create user"),
    })


# --- Plans -----------------------------------------------------------------------------------

@admin_only
def plan_list(request):
    plans = Plan.objects.annotate(server_count=Count("servers")).order_by("id")
    return render(request, "ui/admin/plan_list.html", {"page": paginate(request, plans)})


@admin_only
def plan_create(request):
    form = PlanForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        plan = form.save()
        audit.record(actor(request), "plan.create", plan)
        messages.success(request, _("Plan “%(name)s” created.") % {"name": plan.name})
        return redirect("ui:admin-plans")
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New plan"), "back_href": reverse("ui:admin-plans"), "submit": _("Create plan"),
    })


@admin_only
def plan_edit(request, plan_id: int):
    act = actor(request)
    plan = act.get_or_404(Plan.objects.all(), pk=plan_id)
    form = PlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        if form.has_changed():
            form.save()
            audit.record(act, "plan.update", plan, **form_changes(form))
        messages.success(request, _("Plan “%(name)s” saved.") % {"name": plan.name})
        return redirect("ui:admin-plans")
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("Edit plan %(name)s") % {"name": plan.name}, "back_href": reverse("ui:admin-plans"),
        "submit": _("Save"), "note": _("Changing a plan does not resize existing servers."),
    })


# --- Servers ---------------------------------------------------------------------------------

@admin_only
def server_list(request):
    servers = VirtualServer.objects.select_related("plan", "node", "customer").order_by("id")
    state, customer = request.GET.get("state", ""), request.GET.get("customer", "")
    if state in ServerState.values:
        servers = servers.filter(state=state)
    if customer.isdigit():
        servers = servers.filter(customer_id=int(customer))
    query = request.GET.get("q", "").strip()
    if query:
        servers = servers.filter(hostname__icontains=query)
    return render(request, "ui/admin/server_list.html", {
        "page": paginate(request, servers), "states": ServerState.choices, "state": state,
        "customer": customer, "customers": Customer.objects.order_by("name"), "q": query,
    })


@admin_only
def server_create(request):
    plans = list(Plan.objects.order_by("id"))
    # A first panel has the one starter plan: chosen already.
    only_plan = plans[0].pk if len(plans) == 1 else None
    form = ServerCreateForm(request.POST or None, initial={"customer": request.GET.get("customer"),
                                                           "plan": request.GET.get("plan") or only_plan})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        act = actor(request)
        try:
            with transaction.atomic():  # a refused create leaves no internal customer behind
                customer = data["customer"]
                if customer is None:  # the admin's own server: the provider's internal customer
                    customer, created = Customer.internal_customer()
                    if created:
                        audit.record(act, "customer.create", customer, customer_id=customer.pk, internal=True)
                server, _op, password = lifecycle.create_server(
                    act, customer=customer, plan=data["plan"], hostname=data["hostname"],
                    node=data["node"], private_network=data["private_network"], **form.install_args(),
                )
        except Refused as refused:
            form.add_error(refused.field if refused.field in form.fields else None, refused.message)
        else:
            remember_password(request, server.pk, password)  # the server page shows it once
            messages.success(request, _("Server “%(name)s” is being created.") % {"name": server.hostname})
            return redirect("ui:server", server_id=server.pk)
    # "Where would it go?": the placement's verdict on every node for the chosen plan.
    wanted = request.POST.get("plan") if request.method == "POST" else request.GET.get("plan")
    preview_plan = next((p for p in plans if str(p.pk) == wanted), plans[0] if plans else None)
    return render(request, "ui/admin/server_create.html", {
        "form": form, "title": _("New server"), "back_href": reverse("ui:admin-servers"), "submit": _("Create server"),
        "plans": plans, "preview_plan": preview_plan, "preview": placement_preview(preview_plan),
        "recipes": form.fields["recipe"].queryset,
    })


# --- Operations and audit log ----------------------------------------------------------------

@admin_only
def operation_list(request):
    operations = Operation.objects.select_related("customer", "server")
    status, kind = request.GET.get("status", ""), request.GET.get("kind", "")
    if status in Operation.Status.values:
        operations = operations.filter(status=status)
    if kind in Operation.Kind.values:
        operations = operations.filter(kind=kind)
    return render(request, "ui/admin/operation_list.html", {
        "page": paginate(request, operations.order_by("-id")), "status": status, "kind": kind,
        "statuses": [(value, live.status_label(value)) for value in Operation.Status.values], "kinds": Operation.Kind.choices,
    })


@admin_only
def audit_log(request):
    entries = AuditEntry.objects.select_related("customer").order_by("-id")
    action = request.GET.get("action", "").strip()
    if action:
        entries = entries.filter(action__startswith=action)
    return render(request, "ui/admin/audit.html", {"page": paginate(request, entries, 50), "action": action})
