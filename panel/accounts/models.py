"""People: provider admins, customers and their users, API keys, the audit log."""

import hashlib
import secrets

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy as _

from panel.refusals import Refused

LANGUAGE_CHOICES = [("en", "English"), ("ru", "Русский")]


class Customer(models.Model):
    """A hosting customer: owns servers, has one or more users; billing knows it by external_id."""

    customer_path = "pk"  # how a row reaches its customer (panel.accounts.tenancy)

    external_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    email = models.EmailField()
    name = models.CharField(max_length=200)
    language = models.CharField(max_length=5, choices=LANGUAGE_CHOICES, default="en")
    # The provider's own customer: servers an admin creates for themselves (`Customer.internal_customer`).
    internal = models.BooleanField(default=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def internal_customer(cls) -> tuple["Customer", bool]:
        """The provider's own (internal) customer, created on first use; returns (it, created).
        An ordinary customer to tenancy: its servers are seen by admins and no customer."""
        from django.conf import settings

        existing = cls.objects.filter(internal=True).order_by("id").first()
        if existing is not None:
            return existing, False
        return cls.objects.create(internal=True, name=gettext("Our own (internal)"),
                                  email=settings.DEFAULT_FROM_EMAIL), True

    def delete_refusal(self) -> Refused | None:
        """Why the customer cannot be deleted (the UI and the API ask this), or None."""
        if self.servers.exists():
            return Refused(gettext("The customer still has servers; terminate them first."), "customer_has_servers")
        return None


class User(AbstractUser):
    """A person who logs in: a provider admin, or a user of one customer."""

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Role(models.TextChoices):
        ADMIN = "admin", _("Provider admin")
        CUSTOMER = "customer", _("Customer")

    role = models.CharField(max_length=10, choices=Role.choices, default=Role.CUSTOMER)
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="users")
    # Empty: no language chosen, the customer's language (then the browser's) applies.
    language = models.CharField(max_length=5, choices=LANGUAGE_CHOICES, blank=True)
    totp_secret = models.CharField(max_length=64, blank=True)
    # The last TOTP time step accepted for this user: a code is good once (panel/accounts/totp.py).
    totp_last_step = models.BigIntegerField(null=True, blank=True)

    @property
    def is_provider_admin(self) -> bool:
        return self.role == self.Role.ADMIN or self.is_superuser

    @property
    def preferred_language(self) -> str:
        if self.language:
            return self.language
        return self.customer.language if self.customer_id else ""

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.role == self.Role.CUSTOMER and not self.customer_id and not self.is_superuser:
            raise ValidationError({"customer": _("A customer's user needs a customer.")})
        if self.role == self.Role.ADMIN and self.customer_id:
            raise ValidationError({"customer": _("A provider admin belongs to no customer.")})


class ApiKey(models.Model):
    """A key for `Authorization: Token <key>`: shown once, stored as a SHA-256 hash."""

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    class Scope(models.TextChoices):
        ADMIN = "admin", _("Admin")
        BILLING = "billing", _("Billing (all customers)")
        CUSTOMER = "customer", _("Customer (own servers)")

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=12, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_from = models.GenericIPAddressField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(raw: str) -> str:
        # Keys are 256-bit random, so a fast hash is enough (no dictionary to guess from).
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, *, name: str, scope: str, customer=None, created_by=None) -> tuple["ApiKey", str]:
        """Create a key; returns (row, raw key). The raw key is never stored."""
        raw = "pk_" + secrets.token_urlsafe(32)
        key = cls.objects.create(
            name=name, scope=scope, customer=customer, created_by=created_by, prefix=raw[:10], key_hash=cls.hash(raw)
        )
        return key, raw

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.scope == self.Scope.CUSTOMER and not self.customer_id:
            raise ValidationError({"customer": _("A customer key needs a customer.")})
        if self.scope != self.Scope.CUSTOMER and self.customer_id:
            raise ValidationError({"customer": _("Only customer keys belong to a customer.")})

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        if self.revoked_at:
            return  # keep the first revocation time
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


class LoginFailure(models.Model):
    """One failed password or second-factor code, kept for the throttle's windows
    (see panel/accounts/throttle.py)."""

    class Kind(models.TextChoices):
        PASSWORD = "password"
        CODE = "code"  # a wrong TOTP code: its own per-user counter, which the password step leaves alone

    username = models.CharField(max_length=150, db_index=True)
    address = models.GenericIPAddressField(null=True, db_index=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PASSWORD)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)


class UserSession(models.Model):
    """A signed-in browser session as its user sees it on the sessions page: when it began,
    when it was last seen, from where. One row per Django session key; a row whose session is
    gone (signed out, expired, key cycled) is pruned when the list is read."""

    customer_path = "user__customer"  # how a row reaches its customer (panel.accounts.tenancy)

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="browser_sessions")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]


class AuditEntry(models.Model):
    """Who did what to which object, when and from where. Written for every state change."""

    customer_path = "customer"  # how a row reaches its customer (panel.accounts.tenancy)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_repr = models.CharField(max_length=200)
    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
