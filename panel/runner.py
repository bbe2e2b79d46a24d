"""The job runner's mechanics: claim an operation, report its progress, end it.

Every kind of operation runs the same way (`run()`): claimed by one live worker, worked on by
its `Job` with a `Step` that writes progress, log and heartbeat, and ended in one place, done or
failed with its reason. Which job does which kind is the job table's to say (panel/jobs.py);
the jobs live in their rooms (server jobs in panel/vps, the node install in nodes, backups in
backup). Jobs take an operation's id and are safe to run twice.
"""

import logging
import traceback
from typing import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel import progress
from panel.refusals import Refused
from panel.vps.models import Operation

log = logging.getLogger(__name__)


# What a customer reads when a failure's reason is not written for them (see for_customer).
NEUTRAL_FAILURE = "the operation failed; the provider has the details"


def for_customer(exc: Exception, reason: str | None = None) -> Exception:
    """Mark `exc` as a failure the customer may read the reason of: `reason`, or its own
    message when the panel wrote it for them. `raise for_customer(DriverError(...))`."""
    exc.customer_reason = reason or str(exc)
    return exc


def customer_reason(exc: Exception) -> str:
    """The customer's reason for a failure: a neutral one unless it was written for them (a
    driver's message can name the node, its storage or the panel's address)."""
    if isinstance(exc, Refused):
        return exc.message  # refusals are written for whoever asked
    return getattr(exc, "customer_reason", "") or NEUTRAL_FAILURE


def log_line(message: str) -> str:
    return f"{timezone.now():%H:%M:%S} {message}\n"


class Step:
    """Writes an operation's progress, log and heartbeat as the work goes on.

    A line is the admins' only unless `customer` says what the customer reads: True for the
    same words, or their own wording (without node, storage or panel names)."""

    def __init__(self, op: Operation):
        self.op = op

    def __call__(self, percent: int, message: str, customer: bool | str = False) -> None:
        self.op.progress = max(self.op.progress, min(percent, 100))
        self.op.log += log_line(message)
        if customer:
            self.op.customer_log += log_line(message if customer is True else customer)
        self.op.heartbeat_at = timezone.now()
        self.op.save(update_fields=["progress", "log", "customer_log", "heartbeat_at"])
        progress.publish(self.op)

    def heartbeat(self, _elapsed: float = 0) -> None:
        self.op.heartbeat_at = timezone.now()
        Operation.objects.filter(pk=self.op.pk).update(heartbeat_at=self.op.heartbeat_at, progress=self.op.progress)


class Job:
    """One operation's work: `run` raises to fail; the runner ends the operation either way."""

    # Failures whose message says all there is to say: no traceback in the operation's log.
    expected: tuple[type[Exception], ...] = ()

    def __init__(self, op: Operation):
        self.op = op

    def run(self, step: Step) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        """Clean up after a failure; the operation is marked failed, not yet saved."""

    def ended(self) -> None:
        """Tell the world, once the operation has ended and is saved."""


JobTable = dict[str, Callable[[Operation], Job]]


def claim(operation_id: int) -> Operation | None:
    """Mark the operation running, unless it is finished or another live worker has it."""
    with transaction.atomic():
        op = Operation.objects.select_for_update().filter(pk=operation_id).first()
        if op is None or op.status not in Operation.ACTIVE:
            return None
        if op.status == Operation.Status.RUNNING and op.heartbeat_at and \
                (timezone.now() - op.heartbeat_at).total_seconds() < settings.OPERATION_STALE_SECONDS:
            return None
        op.status = Operation.Status.RUNNING
        op.started_at = op.started_at or timezone.now()
        op.heartbeat_at = timezone.now()
        op.save(update_fields=["status", "started_at", "heartbeat_at"])
        return op


def run(operation_id: int, jobs: JobTable) -> str:
    """Carry out one operation with its kind's job. Returns its final status (django-q2's
    task result), or "skipped" when it is not this worker's to run."""
    op = claim(operation_id)
    if op is None:
        return "skipped"
    job = jobs[op.kind](op)
    try:
        job.run(Step(op))
    except Exception as exc:  # every failure ends the operation visibly, with its reason
        log.warning("operation %s failed: %s", op.id, exc)
        op.status = Operation.Status.FAILED
        op.error = str(exc) or exc.__class__.__name__
        op.customer_error = customer_reason(exc)
        op.log += log_line(f"failed: {op.error}")
        op.customer_log += log_line(f"failed: {op.customer_error}")
        if not isinstance(exc, job.expected):
            op.log += traceback.format_exc()
        job.failed(exc)
    else:
        op.status = Operation.Status.SUCCEEDED
        op.progress = 100
        op.log += log_line("done")
        op.customer_log += log_line("done")
    op.finished_at = timezone.now()
    op.save(update_fields=["status", "progress", "error", "customer_error", "log", "customer_log", "finished_at",
                           "params"])
    job.ended()
    return op.status
