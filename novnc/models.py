"""One-time console tokens."""

from django.db import models

from panel.accounts.models import ApiKey, User
from panel.vps.models import VirtualServer


class ConsoleToken(models.Model):
    """Lets one websocket connect to one server's console, once, within a short time.

    Bound to the user who asked (a session must be the same user) or to the API key that
    asked (the URL then is the credential, for billing systems that hand it to a customer).
    Only the hash is stored.
    """

    customer_path = "server__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    key_hash = models.CharField(max_length=64, unique=True)
    server = models.ForeignKey(VirtualServer, on_delete=models.CASCADE, related_name="console_tokens")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # The customer who owned the server when the token was issued: a change of owner ends it.
    customer_id = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
