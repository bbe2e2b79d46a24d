"""API keys: a customer's own keys (scope customer), and every key for provider admins."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from panel import limits
from panel.accounts import audit
from panel.accounts.models import ApiKey
from panel.ui.forms import ApiKeyForm, CustomerApiKeyForm
from panel.refusals import Refused
from panel.ui.views.common import actor, admin_only, paginate


def _issued(request, key, raw, back):
    """The one page that ever shows the raw key: rendered directly, never stored."""
    messages.success(request, _("API key created. Copy it now: it will not be shown again."))
    response = render(request, "ui/apikey_created.html", {"key": key, "raw": raw, "back": back})
    response["Cache-Control"] = "no-store"
    return response


@login_required
def my_keys(request):
    act = actor(request)
    if act.acts_for_all_customers:
        return redirect("ui:admin-keys")
    if not request.user.customer_id:
        raise Http404
    form = CustomerApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            limits.check_new_api_key(act, request.user.customer)
        except Refused as refused:
            form.add_error(None, refused.message)
        else:
            key, raw = ApiKey.issue(name=form.cleaned_data["name"], scope=ApiKey.Scope.CUSTOMER,
                                    customer=request.user.customer, created_by=request.user)
            audit.record(act, "apikey.create", key, scope=key.scope)
            return _issued(request, key, raw, "ui:keys")
    keys = act.restrict(ApiKey.objects.select_related("created_by")).filter(scope=ApiKey.Scope.CUSTOMER)
    return render(request, "ui/keys.html", {"page": paginate(request, keys.order_by("-id")), "form": form})


@require_POST
@login_required
def revoke_key(request, key_id: int):
    act = actor(request)
    key = act.get_or_404(ApiKey.objects.all(), pk=key_id)
    if key.is_active:
        key.revoke()
        audit.record(act, "apikey.revoke", key)
        messages.success(request, _("The key “%(name)s” is revoked.") % {"name": key.name})
    return redirect("ui:admin-keys" if act.is_admin else "ui:keys")


@admin_only
def admin_keys(request):
    act = actor(request)
    keys = act.restrict(ApiKey.objects.select_related("customer", "created_by"))
    return render(request, "ui/admin/keys.html", {"page": paginate(request, keys.order_by("-id"))})


@admin_only
def admin_key_create(request):
    act = actor(request)
    form = ApiKeyForm(request.POST or None, initial={"customer": request.GET.get("customer")})
    if request.method == "POST" and form.is_valid():
        key, raw = ApiKey.issue(name=form.cleaned_data["name"], scope=form.cleaned_data["scope"],
                                customer=form.cleaned_data["customer"], created_by=request.user)
        audit.record(act, "apikey.create", key, scope=key.scope)
        return _issued(request, key, raw, "ui:admin-keys")
    return render(request, "ui/admin/form.html", {
        "form": form, "title": _("New API key"), "back_href": reverse("ui:admin-keys"), "submit": _("Create key"),
    })
