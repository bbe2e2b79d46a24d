"""Kept for operations queued before the job runner moved: their rows name this dotted path.

New operations are queued as panel.jobs.run_operation (panel/operations.py).
"""


def run_operation(operation_id: int) -> str:
    """Carry out one operation queued by an older version."""
    from panel.jobs import run_operation  # noqa: PLC0415 - the job table imports every room

    return run_operation(operation_id)
