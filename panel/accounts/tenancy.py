"""The one tenancy mechanism: who is acting, and what they may see.

Every view, UI and API alike, turns its request into an `Actor` (`actor(request)`, once per
request) and narrows querysets with `Actor.restrict()`. A customer asking for another
customer's object gets 404 because the object is simply not in their queryset.

Each model with customer data declares how it reaches its customer, as a lookup path to the
Customer's id, and may declare rows that only provider admins see (`admins_only`, a Q):

    class Operation(models.Model):
        customer_path = "customer"

    class IpAddress(models.Model):
        customer_path = "server__customer"
        admins_only = Q(server__isnull=True)  # quarantined addresses belong to no one

A model without `customer_path` holds no customer's data (plans, nodes, pools): `restrict()`
leaves it whole, and the view's permission says who may read it.
"""

from dataclasses import dataclass

from django.db import models
from django.http import Http404

from panel.accounts.models import ApiKey, User


@dataclass(frozen=True)
class Actor:
    """The principal behind a request: a user (session) or an API key, and its reach."""

    user: User | None
    api_key: ApiKey | None
    customer_id: int | None  # None: acts for every customer (admin, billing)
    is_admin: bool  # provider admin: nodes, users, keys, audit log
    address: str | None = None

    @property
    def is_billing(self) -> bool:
        return self.api_key is not None and self.api_key.scope == ApiKey.Scope.BILLING

    @property
    def acts_for_all_customers(self) -> bool:
        return self.customer_id is None

    def __str__(self) -> str:
        if self.api_key is not None:
            return f"api-key:{self.api_key.name}"
        return self.user.username if self.user else "system"

    def restrict(self, queryset: models.QuerySet) -> models.QuerySet:
        """Narrow `queryset` to what this actor may see, by its model's declared `customer_path`
        and `admins_only` rows (see above)."""
        model = queryset.model
        hidden = getattr(model, "admins_only", None)
        if hidden is not None and not self.is_admin:
            queryset = queryset.exclude(hidden)
        path = getattr(model, "customer_path", None)
        if path is None or self.acts_for_all_customers:
            return queryset
        return queryset.filter(**{path: self.customer_id})

    def get_or_404(self, queryset: models.QuerySet, **lookup):
        try:
            return self.restrict(queryset).get(**lookup)
        except (queryset.model.DoesNotExist, ValueError, TypeError):
            raise Http404


SYSTEM = Actor(user=None, api_key=None, customer_id=None, is_admin=True)


def client_address(request) -> str | None:
    # Behind a reverse proxy (TRUSTED_PROXY=1, its address in TRUSTED_PROXIES) the right-most
    # X-Forwarded-For hop that is not a trusted proxy: the same walk as panel.asgi's scope.
    from panel.forwarded import client_of  # noqa: PLC0415

    return client_of(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR"))


def actor(request) -> Actor:
    """The request's Actor, computed once per request: the one helper of the UI and the API."""
    if not hasattr(request, "_panel_actor"):
        request._panel_actor = actor_for(request)
    return request._panel_actor


def actor_for(request) -> Actor:
    """The Actor of an authenticated request (session or API key); views use `actor()`."""
    address = client_address(request)
    key = getattr(request, "auth", None)
    if isinstance(key, ApiKey):
        return Actor(
            user=None,
            api_key=key,
            customer_id=key.customer_id if key.scope == ApiKey.Scope.CUSTOMER else None,
            is_admin=key.scope == ApiKey.Scope.ADMIN,
            address=address,
        )
    return actor_for_user(request.user, address)


def actor_for_user(user: User, address: str | None = None) -> Actor:
    """The Actor of a logged-in user (a session request, or the websocket consumer)."""
    if user.is_provider_admin:
        return Actor(user=user, api_key=None, customer_id=None, is_admin=True, address=address)
    # A customer's user without a customer sees nothing: -1 matches no row.
    return Actor(user=user, api_key=None, customer_id=user.customer_id or -1, is_admin=False, address=address)
