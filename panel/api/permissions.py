from rest_framework.permissions import SAFE_METHODS, BasePermission

from panel.accounts.tenancy import actor  # the one helper; API modules import it from here


class IsAdmin(BasePermission):
    """Provider admins (session) and admin-scope keys."""

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and actor(request).is_admin)


class IsProviderOrReadOnly(BasePermission):
    """Reads for everyone authenticated; writes for admins and billing keys.

    A write to one object is decided after the lookup, so a customer gets 404 for another
    customer's object (it is not in their queryset) and 403 only for their own.
    """

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or actor(request).acts_for_all_customers or view.detail

    def has_object_permission(self, request, view, obj):
        return request.method in SAFE_METHODS or actor(request).acts_for_all_customers


class IsAdminOrReadOnly(BasePermission):
    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or actor(request).is_admin
