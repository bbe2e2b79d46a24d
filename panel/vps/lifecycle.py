"""The server state machine and the requests that start operations.

Views call these functions; they validate everything before any side effect, take the
server's row lock so that only one operation runs per server, record the audit entry and
hand the operation to the worker once the transaction commits.

`TRANSITIONS` is the state machine of the power actions and delete; `ACTIONS` is the table of
them as users start them, read by the server page, its live buttons and the API.
"""

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy

from panel.accounts import audit
from panel.accounts.models import Customer
from panel.accounts.tenancy import Actor
from panel import limits
from panel.events import emit
from panel.operations import hand_over, new_operation
from panel.refusals import Refused
from panel.vps.models import Operation, Plan, ServerState, VirtualServer
from nodes import placement
from nodes.capabilities import lacking, needs_of
from nodes.models import Cluster, Node
from recipes.models import Recipe
from templates_os.models import OsTemplate


@dataclass(frozen=True)
class Transition:
    allowed_from: frozenset
    provider_only: bool = False  # admins and billing keys; never a customer


TRANSITIONS = {
    Operation.Kind.START: Transition(frozenset({ServerState.STOPPED, ServerState.ERROR})),
    Operation.Kind.STOP: Transition(frozenset({ServerState.RUNNING, ServerState.ERROR})),
    Operation.Kind.REBOOT: Transition(frozenset({ServerState.RUNNING})),
    Operation.Kind.SUSPEND: Transition(frozenset({ServerState.RUNNING, ServerState.STOPPED, ServerState.ERROR}),
                                       provider_only=True),
    Operation.Kind.UNSUSPEND: Transition(frozenset({ServerState.SUSPENDED}), provider_only=True),
    Operation.Kind.DELETE: Transition(frozenset(set(ServerState) - {ServerState.DELETING}), provider_only=True),
}


@dataclass(frozen=True)
class Action:
    """A power action or delete as a user starts it: a button of the server page (its name is
    the button's and the UI's URL's) and a route of the API. Several may start one kind of
    operation with different fixed parameters (stop and force-stop)."""

    name: str
    kind: str  # an Operation.Kind of TRANSITIONS
    label: str
    requested: str  # what the panel says once the operation is queued
    params: dict = field(default_factory=dict)

    @property
    def provider_only(self) -> bool:
        return TRANSITIONS[self.kind].provider_only


ACTIONS = {action.name: action for action in (
    Action("start", Operation.Kind.START, pgettext_lazy("button", "Start"), gettext_lazy("Start requested.")),
    Action("stop", Operation.Kind.STOP, gettext_lazy("Shut down"), gettext_lazy("Shutdown requested.")),
    Action("force-stop", Operation.Kind.STOP, gettext_lazy("Force power off"),
           gettext_lazy("Forced power off requested."), {"force": True}),
    Action("reboot", Operation.Kind.REBOOT, pgettext_lazy("button", "Reboot"), gettext_lazy("Reboot requested.")),
    Action("suspend", Operation.Kind.SUSPEND, pgettext_lazy("button", "Suspend"),
           gettext_lazy("Suspension requested.")),
    Action("unsuspend", Operation.Kind.UNSUSPEND, pgettext_lazy("button", "Unsuspend"),
           gettext_lazy("Unsuspension requested.")),
    Action("delete", Operation.Kind.DELETE, gettext_lazy("Delete server"), gettext_lazy("Deletion requested.")),
)}


REINSTALLABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED, ServerState.ERROR})


def refuse_golden_template(server: VirtualServer) -> None:
    """A golden template's server (panel/images/golden.py) is locked until the template is edited:
    starting or changing it would change what new servers are cloned from."""
    template = getattr(server, "golden_template", None)  # the reverse one-to-one; None when it is not one
    if template is not None and not template.editing:
        raise Refused(_("This server is the golden template %(name)s: it cannot be started or changed; edit the "
                        "template first.") % {"name": template.name}, "golden_template")


def allowed_actions(server: VirtualServer, actor: Actor) -> list[str]:
    """The actions `actor` may start on `server` now (for buttons; the request re-checks)."""
    return [
        kind
        for kind, rule in TRANSITIONS.items()
        if server.state in rule.allowed_from and (not rule.provider_only or actor.acts_for_all_customers)
    ]


def request_action(actor: Actor, server_id: int, kind: str, params: dict | None = None) -> Operation:
    """Start a power action or delete on a server the actor can see (else Http404)."""
    params = dict(params or {})
    rule = TRANSITIONS.get(kind)
    if rule is None:
        raise Refused(_("Unknown action."), "unknown_action", 400)
    with transaction.atomic():
        # The row lock serializes concurrent requests on one server: the second one sees the
        # first one's operation and is refused.
        server = actor.get_or_404(VirtualServer.objects.select_for_update(), pk=server_id)
        if rule.provider_only and not actor.acts_for_all_customers:
            raise Refused(_("Only the provider can do this."), "permission_denied", 403)
        refuse_golden_template(server)
        if kind == Operation.Kind.START and server.state == ServerState.SUSPENDED:
            raise Refused(
                _("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or _("no reason given")},
                "server_suspended",
            )
        if server.state not in rule.allowed_from:
            raise Refused(
                _("Cannot %(action)s a server that is %(state)s.") % {"action": kind, "state": server.get_state_display().lower()},
                "invalid_state",
            )
        op = new_operation(actor, kind, server=server, params=params)
        if kind == Operation.Kind.SUSPEND:
            server.state_before_suspend = server.state
            server.suspend_reason = str(params.get("reason", ""))[:500]
            server.save(update_fields=["state_before_suspend", "suspend_reason", "updated_at"])
        elif kind == Operation.Kind.DELETE:
            server.state = ServerState.DELETING
            server.save(update_fields=["state", "updated_at"])
        audit.record(actor, f"server.{kind}", server, operation=op.id, **params)
        hand_over(op)
    return op


@dataclass
class InstallChoice:
    """What a create or reinstall installs, checked: the template, recipe and its parameters,
    the root password (generated when not given) and SSH keys."""

    template: OsTemplate
    recipe: Recipe | None
    params: dict
    password: str
    password_generated: bool
    ssh_keys: list[str]


def check_install(actor: Actor, *, os_template, disk_gib: int, recipe=None, recipe_params=None,
                  password: str = "", ssh_keys=None) -> InstallChoice:
    """Validate an install before anything is made; Refused (400) names the field at fault."""
    from templates_os.provisioning import check_ssh_keys, generate_password

    template = os_template if isinstance(os_template, OsTemplate) else \
        OsTemplate.objects.filter(**{"pk" if str(os_template).isdigit() else "slug": os_template}).first()
    if template is None or not template.offered:
        raise Refused(_("Unknown or unavailable OS template."), "invalid", 400, field="os_template")
    if disk_gib < template.min_disk_gib:
        raise Refused(_("%(template)s needs a disk of at least %(min)s GiB; the plan has %(disk)s GiB.")
                      % {"template": template.name, "min": template.min_disk_gib, "disk": disk_gib},
                      "disk_too_small", 400, field="os_template")
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = Recipe.objects.filter(**{"pk" if str(recipe).isdigit() else "slug": recipe}).first() \
            if recipe != "" else None
        if recipe is None:
            raise Refused(_("Unknown recipe."), "invalid", 400, field="recipe")
    if recipe is not None and (not recipe.enabled or not recipe.fits(template.family)):
        raise Refused(_("The recipe %(recipe)s does not fit %(template)s.") % {"recipe": recipe.name,
                      "template": template.name}, "invalid", 400, field="recipe")
    try:
        params = recipe.resolve(recipe_params) if recipe else {}
    except ValidationError as exc:
        messages = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in exc.message_dict.items())
        raise Refused(_("Recipe parameters: %(errors)s") % {"errors": messages}, "invalid", 400,
                      field="recipe_params") from None
    if recipe is None and recipe_params:
        raise Refused(_("Parameters without a recipe."), "invalid", 400, field="recipe_params")
    try:
        keys = check_ssh_keys(list(ssh_keys or []))
    except ValueError as exc:
        raise Refused(str(exc), "invalid", 400, field="ssh_keys") from None
    check_password(password)
    return InstallChoice(template, recipe, params, password or generate_password(), not password, keys)


def create_server(actor: Actor, *, customer: Customer, plan: Plan, hostname: str, os_template,
                  recipe=None, recipe_params=None, password: str = "", ssh_keys=None,
                  node: Node | None = None, cluster: Cluster | None = None,
                  private_network: bool = False) -> tuple[VirtualServer, Operation, str]:
    """Create a server record, its install and its `create` operation. Returns them with the
    root password (to be shown once). Inputs are validated by the caller's serializer; here
    are the checks that need the database or the actor."""
    from templates_os.provisioning import new_installation

    if not actor.acts_for_all_customers and customer.pk != actor.customer_id:
        raise Refused(_("Unknown customer."), "invalid", 400, field="customer")
    if (node is not None or cluster is not None) and not actor.is_admin:
        raise Refused(_("Only admins choose the node or cluster."), "permission_denied", 403,
                      field="node" if node is not None else "cluster")
    choice = check_install(actor, os_template=os_template, disk_gib=plan.disk_gib, recipe=recipe,
                           recipe_params=recipe_params, password=password, ssh_keys=ssh_keys)
    with transaction.atomic():
        limits.check_new_server(actor, customer)
        server = place_new_server(actor, customer=customer, plan=plan, hostname=hostname, os_template=choice.template,
                                  node=node, cluster=cluster, private_network=private_network)
        op = new_operation(actor, Operation.Kind.CREATE, server=server, params={})
        new_installation(server, choice.template, choice.recipe, choice.params, choice.password, choice.ssh_keys, op)
        audit.record(actor, "server.create", server, operation=op.id, plan=plan.name, node=server.node.name,
                     os_template=choice.template.slug, recipe=choice.recipe.slug if choice.recipe else "")
        emit("server.created", customer_id=customer.pk, server=server.pk, hostname=hostname, operation=op.id,
             plan=plan.pk, os_template=choice.template.slug)
        hand_over(op)
    return server, op, choice.password


def place_new_server(actor: Actor, *, customer: Customer, plan: Plan, hostname: str, os_template: OsTemplate | None,
                     node: Node | None = None, cluster: Cluster | None = None, private_network: bool = False,
                     disk_gib: int | None = None) -> VirtualServer:
    """Reserve a node's capacity and the addresses for a new server and record it (state
    creating). Call inside the caller's transaction: a refusal undoes all of it."""
    from panel.ipam.allocation import allocate_for_new_server

    disk_gib = max(disk_gib or 0, plan.disk_gib)
    want = placement.Request(plan.vcpus, plan.ram_mib, disk_gib, cluster.pk if cluster else None, needs_of(plan))
    try:
        decision = placement.reserve(want, only=node)
    except placement.NoCapacity as exc:
        # Admins read why each node was filtered out; customers are not told about nodes.
        detail = exc.decision.reasons() if actor.is_admin else _("no capacity for this plan right now")
        raise Refused(_("No node can take this server: %(why)s") % {"why": detail}, "no_capacity", 409)
    server = VirtualServer.objects.create(
        customer=customer, plan=plan, node=decision.node, storage=decision.storage, hostname=hostname,
        os_template=os_template, vcpus=plan.vcpus, ram_mib=plan.ram_mib, disk_gib=disk_gib, state=ServerState.CREATING,
    )
    # In the same transaction: an exhausted pool undoes the server and its placement too.
    allocate_for_new_server(server, private_network)
    return server


def request_reinstall(actor: Actor, server_id: int, *, os_template=None, recipe=None, recipe_params=None,
                      password: str = "", ssh_keys=None) -> tuple[Operation, str]:
    """Install the OS again on the same server (same addresses): the disk is made anew.
    Returns the operation and the new root password (to be shown once)."""
    from templates_os.provisioning import new_installation

    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update(), pk=server_id)
        refuse_golden_template(server)
        if server.state == ServerState.SUSPENDED:
            raise Refused(_("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or
                          _("no reason given")}, "server_suspended")
        if server.state not in REINSTALLABLE:
            raise Refused(_("Cannot reinstall a server that is %(state)s.") %
                          {"state": server.get_state_display().lower()}, "invalid_state")
        choice = check_install(actor, os_template=os_template or server.os_template_id, disk_gib=server.disk_gib,
                               recipe=recipe, recipe_params=recipe_params, password=password, ssh_keys=ssh_keys)
        op = new_operation(actor, Operation.Kind.REINSTALL, server=server, params={"state": server.state})
        new_installation(server, choice.template, choice.recipe, choice.params, choice.password, choice.ssh_keys, op)
        server.os_template = choice.template
        server.state = ServerState.INSTALLING
        server.save(update_fields=["os_template", "state", "updated_at"])
        audit.record(actor, "server.reinstall", server, operation=op.id, os_template=choice.template.slug,
                     recipe=choice.recipe.slug if choice.recipe else "")
        hand_over(op)
    return op, choice.password


def request_migration(actor: Actor, server_id: int, node: Node, live: bool = True) -> Operation:
    """Move a server to `node` of the same cluster (admins). The destination's capacity is
    taken now, in this transaction; the source's is given back when the move is done."""
    if not actor.is_admin:
        raise Refused(_("Only admins migrate servers."), "permission_denied", 403)
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("node"), pk=server_id)
        refuse_golden_template(server)
        if node.pk == server.node_id:
            raise Refused(_("The server is already on that node."), "invalid", 400, field="node")
        if node.cluster_id != server.node.cluster_id:
            raise Refused(_("Servers move only within their cluster (its storage is shared)."), "invalid", 400,
                          field="node")
        wanted = ServerState.RUNNING if live else ServerState.STOPPED
        if server.state != wanted:
            raise Refused(_("A live migration needs a running server, a cold one a stopped server."),
                          "invalid_state")
        op = new_operation(actor, Operation.Kind.MIGRATE, server=server,
                           params={"node": node.pk, "live": live, "state": server.state})
        try:
            placement.reserve(placement.Request(server.vcpus, server.ram_mib, server.disk_gib,
                                                needs=needs_of(server.plan)), only=node)
        except placement.NoCapacity as exc:
            raise Refused(_("The node cannot take this server: %(why)s") % {"why": exc.decision.reasons()},
                          "no_capacity", 409, field="node")
        server.state = ServerState.MIGRATING
        server.save(update_fields=["state", "updated_at"])
        audit.record(actor, "server.migrate", server, operation=op.id, node=node.name, live=live)
        hand_over(op)
    return op


# -- billing actions: change of plan, root password reset ------------------------------------

PLAN_CHANGEABLE = frozenset({ServerState.RUNNING, ServerState.STOPPED, ServerState.SUSPENDED})


def request_plan_change(actor: Actor, server_id: int, plan: Plan) -> Operation:
    """Move a server to another plan (the provider: admins and billing keys). The disk only
    grows; the node's capacity for the difference is taken now, under the node's row lock, in
    this transaction (what shrinks is given back). The worker applies the new sizes."""
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update().select_related("plan"), pk=server_id)
        if not actor.acts_for_all_customers:
            raise Refused(_("Only the provider can do this."), "permission_denied", 403)
        refuse_golden_template(server)
        if server.state not in PLAN_CHANGEABLE:
            raise Refused(_("Cannot change the plan of a server that is %(state)s.") %
                          {"state": server.get_state_display().lower()}, "invalid_state")
        if plan.disk_gib < server.disk_gib:
            raise Refused(_("Disks only grow: the server has %(disk)s GiB, the plan %(plan)s only %(new)s GiB.")
                          % {"disk": server.disk_gib, "plan": plan.name, "new": plan.disk_gib},
                          "disk_shrink", 400, field="plan")
        before = {"vcpus": server.vcpus, "ram_mib": server.ram_mib, "disk_gib": server.disk_gib}
        after = {"vcpus": plan.vcpus, "ram_mib": plan.ram_mib, "disk_gib": plan.disk_gib}
        if plan.pk == server.plan_id and before == after:
            raise Refused(_("The server already has this plan."), "invalid", 400, field="plan")
        op = new_operation(actor, Operation.Kind.CHANGE_PLAN, server=server, params={
            "plan": plan.pk, "previous_plan": server.plan_id, "before": before, "after": after,
            "state": server.state})
        delta = {k: after[k] - before[k] for k in after}
        node = Node.objects.select_for_update().select_related("cluster").prefetch_related("cluster__storages") \
            .get(pk=server.node_id)
        missing = lacking(node.capabilities, needs_of(plan))
        if missing:
            detail = f"node {node.name}: {missing}" if actor.is_admin else _("its node cannot serve this plan")
            raise Refused(_("The server cannot change to this plan: %(why)s") % {"why": detail}, "no_capacity", 409)
        if any(d > 0 for d in delta.values()):
            if node.state != Node.State.ONLINE:
                raise Refused(_("The server's node is %(state)s; try again later.") %
                              {"state": node.get_state_display().lower()}, "no_capacity", 409)
            why = placement.why_not(node, placement.Request(*(max(delta[k], 0) for k in ("vcpus", "ram_mib",
                                                                                           "disk_gib"))))
            if why:
                detail = why if actor.is_admin else _("its node has no room for this plan right now")
                raise Refused(_("The server cannot grow to this plan: %(why)s") % {"why": detail}, "no_capacity", 409)
        placement.adjust(node.pk, delta["vcpus"], delta["ram_mib"], delta["disk_gib"])
        audit.record(actor, "server.change_plan", server, operation=op.id, plan=plan.name,
                     previous_plan=server.plan.name, **{k: f"{before[k]}→{after[k]}" for k in after})
        hand_over(op)
    return op


def check_password(password: str) -> None:
    """A root password someone chose (an empty one is generated later): Refused if unusable."""
    if password and (len(password) < 8 or len(password) > 128 or any(ord(c) < 32 for c in password)):
        raise Refused(_("A password has 8 to 128 characters and no control characters."), "invalid", 400,
                      field="password")


def request_password_reset(actor: Actor, server_id: int, password: str = "") -> tuple[Operation, str]:
    """Set root's password on a running server through its QEMU guest agent (the owner and the
    provider). Returns the operation and the password (generated when not given; shown once).
    The password goes to the worker encrypted in the operation and is dropped there."""
    from panel.crypto import encrypt
    from templates_os.provisioning import generate_password

    check_password(password)
    password = password or generate_password()
    with transaction.atomic():
        server = actor.get_or_404(VirtualServer.objects.select_for_update(), pk=server_id)
        if server.state == ServerState.SUSPENDED:
            raise Refused(_("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or
                          _("no reason given")}, "server_suspended")
        if server.state != ServerState.RUNNING:
            raise Refused(_("The password is set by the guest agent of a running server; start it first."),
                          "invalid_state")
        op = new_operation(actor, Operation.Kind.RESET_PASSWORD, server=server,
                           params={"user": "root", "secret": encrypt(password)})
        audit.record(actor, "server.reset_password", server, operation=op.id)
        hand_over(op)
    return op, password
