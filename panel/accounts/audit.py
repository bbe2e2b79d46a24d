"""Writing the audit log: one call per state-changing action."""

from panel.accounts.models import AuditEntry
from panel.accounts.tenancy import Actor


def record(actor: Actor, action: str, obj=None, customer_id: int | None = None, **detail) -> AuditEntry:
    """Record that `actor` did `action` to `obj` (a model instance or None)."""
    if customer_id is None and obj is not None:
        customer_id = getattr(obj, "customer_id", None)
    return AuditEntry.objects.create(
        user=actor.user,
        api_key=actor.api_key,
        actor_repr=str(actor)[:200],
        customer_id=customer_id,
        action=action,
        object_type=obj._meta.model_name if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        address=actor.address,
        detail=detail,
    )
