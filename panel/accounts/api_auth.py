"""`Authorization: Token <key>` for the REST API."""

from django.utils import timezone
from rest_framework import authentication, exceptions

from panel.accounts.models import ApiKey
from panel.accounts.tenancy import client_address


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        raw = header[1].decode(errors="replace")
        try:
            key = ApiKey.objects.select_related("created_by").get(key_hash=ApiKey.hash(raw), revoked_at__isnull=True)
        except ApiKey.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        now = timezone.now()
        # Record the last use at most once a minute: a busy billing system should not turn
        # every read into a write.
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now, last_used_from=client_address(request))
        return (ApiKeyUser(key), key)

    def authenticate_header(self, request):
        return self.keyword


class ApiKeyUser:
    """Stands in for request.user when a key authenticates: a key is not a person."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_superuser = False
    customer_id = None
    pk = None
    id = None

    def __init__(self, key: ApiKey):
        self.key = key
        self.username = f"api-key:{key.name}"
        self.is_provider_admin = key.scope == ApiKey.Scope.ADMIN

    def __str__(self) -> str:
        return self.username
