"""Backup plans as django-q2 cron schedules, and one run of a plan.

Each enabled plan is the schedule "backup-plan-<id>" calling `run_plan(<id>)`. A run queues one
backup operation per server in the plan's scope; a server busy with another operation is left
for the next run (and said so in the plan's summary), as is one whose backup failed.
"""

import logging

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from backup.models import check_cron

log = logging.getLogger(__name__)


def schedule_name(plan_id: int) -> str:
    return f"backup-plan-{plan_id}"


def sync_plan(plan) -> None:
    """Make the plan's django-q2 schedule match it (none when it is disabled)."""
    from croniter import croniter
    from django_q.models import Schedule

    name = schedule_name(plan.id)
    if not plan.enabled or check_cron(plan.schedule):
        Schedule.objects.filter(name=name).delete()
        return
    next_run = croniter(plan.schedule, timezone.localtime()).get_next(type(timezone.localtime()))
    Schedule.objects.update_or_create(
        name=name,
        defaults={"func": "backup.schedules.run_plan", "args": str(plan.id), "schedule_type": Schedule.CRON,
                  "cron": plan.schedule, "repeats": -1, "next_run": next_run},
    )


def sync_schedules(**_kwargs) -> None:
    """All plans' schedules, and none for plans that are gone (after every migrate)."""
    from django_q.models import Schedule

    from backup.models import BackupPlan

    plans = list(BackupPlan.objects.all())
    for plan in plans:
        sync_plan(plan)
    names = {schedule_name(p.id) for p in plans}
    Schedule.objects.filter(name__startswith="backup-plan-").exclude(name__in=names).delete()


@receiver(post_save, sender="backup.BackupPlan")
def _plan_saved(sender, instance, **_kwargs) -> None:
    sync_plan(instance)


@receiver(post_delete, sender="backup.BackupPlan")
def _plan_deleted(sender, instance, **_kwargs) -> None:
    from django_q.models import Schedule

    Schedule.objects.filter(name=schedule_name(instance.id)).delete()


def run_plan(plan_id: int) -> str:
    """Queue this run's backups (or the panel backup); returns the summary it stores on the plan."""
    from backup import actions
    from backup.models import BackupPlan
    from backup.connect import check_target
    from panel.accounts.tenancy import SYSTEM
    from panel.refusals import Refused

    plan = BackupPlan.objects.select_related("target").filter(pk=plan_id, enabled=True).first()
    if plan is None:
        return "no such enabled plan"
    error = check_target(plan.target)
    if error:
        summary = f"target {plan.target.name} failed its check: {error}; nothing queued, retried next run"
    elif plan.scope == BackupPlan.Scope.PANEL:
        op = actions.request_panel_backup(SYSTEM, plan.target, plan=plan)
        summary = f"queued the panel backup (operation {op.id})"
    else:
        queued, skipped = [], []
        for server in plan.servers_in_scope().select_related("plan"):
            try:
                op = actions.request_backup(SYSTEM, server.id, target=plan.target, plan=plan)
                queued.append(op.id)
            except Refused as refused:
                skipped.append(f"{server.hostname}: {refused.message}")
        summary = f"queued {len(queued)} backup(s)" + (f"; skipped {len(skipped)}: " + "; ".join(skipped) if skipped else "")
    BackupPlan.objects.filter(pk=plan.pk).update(last_run_at=timezone.now(), last_run_summary=summary[:4000])
    log.info("backup plan %s: %s", plan.name, summary)
    return summary
