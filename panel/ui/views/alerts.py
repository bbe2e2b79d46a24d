"""The alert pages: a customer's (their servers' alerts, their own rules) and the admins' (every
open and recent alert, the built-in rules to tune, customers' rules)."""

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel.accounts import audit
from panel.alerts import rules as alert_rules
from panel.alerts.api import MAX_RULES_PER_CUSTOMER
from panel.alerts.forms import BuiltinRuleForm, CustomerRuleForm
from panel.alerts.models import Alert, AlertState, Rule
from panel.ui.views.common import actor, admin_only, form_changes, paginate

RECENT = dt.timedelta(days=30)


def _alerts(queryset):
    rows = queryset.select_related("rule", "customer").order_by("-id")
    open_rows = [a for a in rows.exclude(state=AlertState.RESOLVED)[:500]]
    recent = rows.filter(state=AlertState.RESOLVED, resolved_at__gte=timezone.now() - RECENT)
    return open_rows, recent


def _decorate(alerts):
    for alert in alerts:
        alert.shown_value = alert_rules.format_value(alert.rule.kind, alert.value)
    return alerts


@login_required
def alert_list(request):
    """A customer's alerts (open, then the last 30 days) and rules; POST: a new rule."""
    act = actor(request)
    if act.acts_for_all_customers:
        return redirect("ui:admin-alerts")
    if not request.user.customer_id:
        raise Http404
    customer_id = request.user.customer_id
    form = CustomerRuleForm(request.POST or None, customer_id=customer_id,
                            initial={"email": request.user.customer.email, "warning": 90, "for_minutes": 5})
    if request.method == "POST":
        if Rule.objects.filter(customer_id=customer_id).count() >= MAX_RULES_PER_CUSTOMER:
            form.add_error(None, _("At most %(n)s alert rules per customer.") % {"n": MAX_RULES_PER_CUSTOMER})
        elif form.is_valid():
            rule = form.save()
            audit.record(act, "alert_rule.create", rule, kind=rule.kind, warning=rule.warning)
            messages.success(request, _("The rule “%(name)s” watches from the next minute on.") % {"name": rule})
            return redirect("ui:alerts")
    open_rows, recent = _alerts(act.restrict(Alert.objects.all()))
    own = act.restrict(Rule.objects.select_related("server")).order_by("id")
    page = paginate(request, recent)
    _decorate(page.object_list)
    return render(request, "ui/alerts.html", {
        "open": _decorate(open_rows), "page": page, "rules": own, "form": form})


@login_required
def alert_rule_edit(request, rule_id: int):
    """A customer's rule: GET the form, POST the change (another's rule: 404)."""
    act = actor(request)
    rule = act.get_or_404(Rule.objects.filter(customer__isnull=False), pk=rule_id)
    form = CustomerRuleForm(request.POST or None, instance=rule, customer_id=rule.customer_id)
    if request.method == "POST" and form.is_valid():
        changes = form_changes(form)
        form.save()
        audit.record(act, "alert_rule.update", rule, **changes)
        messages.success(request, _("The rule “%(name)s” is saved.") % {"name": rule})
        return redirect("ui:admin-alerts" if act.acts_for_all_customers else "ui:alerts")
    return render(request, "ui/alert_rule_form.html", {"form": form, "rule": rule})


@require_POST
@login_required
def alert_rule_delete(request, rule_id: int):
    act = actor(request)
    rule = act.get_or_404(Rule.objects.filter(customer__isnull=False), pk=rule_id)
    audit.record(act, "alert_rule.delete", rule, kind=rule.kind)
    rule.delete()
    messages.success(request, _("The rule “%(name)s” is deleted, with its alerts.") % {"name": rule})
    return redirect("ui:admin-alerts" if act.acts_for_all_customers else "ui:alerts")


@admin_only
def admin_alerts(request):
    """Every open alert, the last 30 days', the built-in rules (tuned here) and customers' rules."""
    alert_rules.ensure_builtin_rules()
    builtin = list(Rule.objects.filter(customer__isnull=True).order_by("id"))
    bound = getattr(request, "_alert_rule_form", None)
    forms = []
    for rule in builtin:
        form = bound if bound is not None and bound.instance.pk == rule.pk else BuiltinRuleForm(
            instance=rule, prefix=f"r{rule.pk}")
        for field in form.fields.values():  # the row's inputs belong to the form in its last cell
            field.widget.attrs["form"] = f"rule-{form.prefix}"
        rule.unit = alert_rules.unit(rule.kind)
        forms.append((rule, form))
    open_rows, recent = _alerts(Alert.objects.all())
    state = request.GET.get("state", "")
    counts = Alert.objects.filter(open_fingerprint__isnull=False).aggregate(
        critical=Count("id", filter=Q(state=AlertState.FIRING, severity="critical")),
        warning=Count("id", filter=Q(state=AlertState.FIRING, severity="warning")),
        pending=Count("id", filter=Q(state=AlertState.PENDING)))
    if state in (AlertState.FIRING, AlertState.PENDING):
        open_rows = [a for a in open_rows if a.state == state]
    customer_rules = Rule.objects.filter(customer__isnull=False).select_related("customer", "server").order_by(
        "customer__name", "id")
    page = paginate(request, recent)
    _decorate(page.object_list)
    return render(request, "ui/admin/alerts.html", {
        "open": _decorate(open_rows), "page": page, "forms": forms, "counts": counts,
        "state": state, "customer_rules": customer_rules})


@require_POST
@admin_only
def admin_alert_rule(request, rule_id: int):
    """Tune a built-in rule; a bad value shows the page again with the error on its field."""
    try:
        rule = Rule.objects.get(pk=rule_id, customer__isnull=True)
    except Rule.DoesNotExist:
        raise Http404
    form = BuiltinRuleForm(request.POST, instance=rule, prefix=f"r{rule.pk}")
    if form.is_valid():
        changes = form_changes(form)
        form.save()
        audit.record(actor(request), "alert_rule.update", rule, **changes)
        messages.success(request, _("“%(name)s” is saved.") % {"name": rule})
        return redirect("ui:admin-alerts")
    messages.error(request, _("“%(name)s” is not saved: see the marked fields.") % {"name": rule})
    request._alert_rule_form = form
    return admin_alerts(request)
