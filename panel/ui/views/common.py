"""Helpers shared by the UI views: access checks, pagination, safe redirects."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme

from panel.accounts import tenancy

PAGE_SIZE = 25

actor = tenancy.actor  # the one request -> Actor helper, the API's too


def admin_only(view):
    """Provider admins only; anyone else gets 404 (the admin area does not exist for them)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_provider_admin:
            raise Http404
        return view(request, *args, **kwargs)

    return login_required(wrapped)


def paginate(request, queryset, per_page: int = PAGE_SIZE):
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def safe_next(request, candidate: str | None, default: str = "ui:home"):
    """Redirect to `candidate` if it is a local URL, else to `default`."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(candidate)
    return redirect(default)


def form_changes(form) -> dict:
    """What an edit form changed, for the audit log."""
    return {name: str(form.cleaned_data.get(name)) for name in form.changed_data}

