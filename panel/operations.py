"""Starting an Operation and handing it to the worker: the one way every room does it.

`new_operation()` creates the row, refused while another operation runs on the same server,
node or (for the panel's own backup) the panel; `hand_over()` queues it for the worker once the
caller's transaction commits, so a refused or rolled-back request queues nothing. Call it last
in the request: unit tests replace `after_commit` to run the job at once.
"""

from django.db import transaction
from django.utils.translation import gettext as _

from panel.refusals import Refused
from panel.vps.models import Operation

# What the queue stores for every operation; older rows name panel.vps.tasks.run_operation.
RUN_OPERATION = "panel.jobs.run_operation"


def after_commit(fn) -> None:
    """Run `fn` once the current transaction commits (unit tests replace this to run inline)."""
    transaction.on_commit(fn)


def enqueue(operation_id: int) -> None:
    """Queue the operation for the worker (django-q2) now."""
    from django_q.tasks import async_task

    async_task(RUN_OPERATION, operation_id, task_name=f"operation-{operation_id}")


def hand_over(op: Operation) -> None:
    """Queue `op` for the worker once the current transaction commits."""
    after_commit(lambda: enqueue(op.id))


def new_operation(actor, kind: str, *, server=None, node=None, params: dict | None = None) -> Operation:
    """Create an operation of `kind` on `server`, on `node`, or (neither) on the panel itself.
    Refused while another one is active there: operations on one object are serialized."""
    if server is not None:
        busy, target, customer_id = server.operations, server.hostname, server.customer_id
        message = _("Another operation is in progress on this server; wait for it to finish.")
    elif node is not None:
        busy, target, customer_id = node.operations, node.name, None
        message = _("An operation is already running on this node.")
    else:
        busy, target, customer_id = Operation.objects.filter(kind=kind), "panel", None
        message = _("A panel backup is already running.")
    if busy.filter(status__in=Operation.ACTIVE).exists():
        raise Refused(message, "operation_in_progress")
    # A clone's create (panel/images) reads this server's disk: the server waits for it to end.
    if server is not None and Operation.objects.filter(status__in=Operation.ACTIVE, params__clone_of=server.pk).exists():
        raise Refused(_("A clone of this server is being made; wait for it to finish."), "operation_in_progress")
    # The customer reads who asked only when it was one of their own (their user, their key).
    theirs = customer_id is not None and actor.customer_id == customer_id
    return Operation.objects.create(kind=kind, server=server, node=node, customer_id=customer_id, target_repr=target,
                                    params=params or {}, requested_by=str(actor),
                                    customer_requested_by=str(actor) if theirs else Operation.PROVIDER)
