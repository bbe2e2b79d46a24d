"""The admin area's webhooks page: every subscription, the delivery log, and re-send."""

from django.contrib import messages
from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _

from panel.accounts import audit
from panel.ui.views.common import actor, admin_only, paginate
from panel.webhooks import delivery as delivery_actions
from panel.webhooks.models import Delivery, Webhook


@admin_only
def webhook_list(request):
    """GET: subscriptions and the delivery log (newest first). POST `delivery`: re-send it."""
    if request.method == "POST":
        return _resend(request)
    hooks = Webhook.objects.select_related("customer").annotate(
        pending=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.PENDING)),
        failed=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.FAILED)),
    ).order_by("-id")
    deliveries = Delivery.objects.select_related("webhook", "event").order_by("-id")
    status = request.GET.get("status", "")
    if status in Delivery.Status.values:
        deliveries = deliveries.filter(status=status)
    webhook = request.GET.get("webhook", "")
    if webhook.isdigit():
        deliveries = deliveries.filter(webhook_id=int(webhook))
    return render(request, "ui/admin/webhooks.html", {
        "hooks": hooks, "page": paginate(request, deliveries, 50), "statuses": Delivery.Status.choices,
        "status": status, "webhook": webhook,
    })


def _resend(request):
    delivery_id = request.POST.get("delivery", "")
    if not delivery_id.isdigit():
        raise Http404
    row = get_object_or_404(Delivery.objects.select_related("webhook", "event"), pk=int(delivery_id))
    with transaction.atomic():
        delivery_actions.resend(row.pk)
        audit.record(actor(request), "webhook.resend", row.webhook, delivery=str(row.uuid), event=row.event.event)
    messages.success(request, _("The delivery %(id)s is queued to be sent again.") % {"id": row.uuid})
    return redirect(request.get_full_path())
