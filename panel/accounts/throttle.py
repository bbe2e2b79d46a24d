"""Login rate limiting: too many recent failures for a username or an address lock it out."""

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from panel.accounts.models import LoginFailure


def _window_start():
    return timezone.now() - timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def is_locked_out(username: str, address: str | None) -> bool:
    recent = LoginFailure.objects.filter(created_at__gte=_window_start())
    by_user = recent.filter(username=username.lower()).count()
    by_address = recent.filter(address=address).count() if address else 0
    # An address may try a few usernames (typos), but not spray a dictionary.
    return by_user >= settings.LOGIN_MAX_FAILURES or by_address >= 3 * settings.LOGIN_MAX_FAILURES


def record_failure(username: str, address: str | None) -> None:
    LoginFailure.objects.create(username=username.lower(), address=address)
    LoginFailure.objects.filter(created_at__lt=_window_start()).delete()


def clear_failures(username: str, address: str | None) -> None:
    LoginFailure.objects.filter(Q(username=username.lower()) | Q(address=address)).delete()
