"""Sign-in rate limiting: what may try a password or a second-factor code now.

Passwords (LoginFailure.Kind.PASSWORD) are limited three ways, so that an attacker elsewhere
cannot lock the owner out while guessing stays slow:

- per (username, address): LOGIN_MAX_FAILURES failures lock that pair for LOGIN_LOCK_SECONDS,
  doubling with every further failure (up to the window). Only this pair is locked: the owner
  at their own address is not.
- per address, any username: LOGIN_ADDRESS_MAX_FAILURES in the window lock the address (one
  address spraying many usernames).
- per username, all addresses: past LOGIN_USER_MAX_FAILURES within LOGIN_USER_WINDOW_SECONDS
  (a distributed guesser), only addresses the user fully signed in from within
  LOGIN_KNOWN_ADDRESS_DAYS may still try; the owner's usual address keeps working.

A successful sign-in clears only its own (username, address) failures: failures of other
usernames from that address stay until they expire, so signing in as oneself between guesses
at someone else's password gains nothing.

Second-factor codes (Kind.CODE) have their own per-user counter, which the password step never
clears: OTP_MAX_FAILURES wrong codes end the half-signed-in session (the password is needed
again), and every further code waits LOGIN_LOCK_SECONDS, doubling per failure, up to the
OTP_FAILURE_WINDOW_SECONDS the failures are kept for. Only a right code clears it.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from panel.accounts.models import AuditEntry, LoginFailure

PASSWORD, CODE = LoginFailure.Kind.PASSWORD, LoginFailure.Kind.CODE


def _since(seconds: int):
    return timezone.now() - timedelta(seconds=seconds)


def _growing_lock(failures, allowed: int, cap_seconds: int) -> bool:
    """Past `allowed` failures, the next try waits LOGIN_LOCK_SECONDS after the last one,
    doubled for each failure beyond `allowed`, at most `cap_seconds`."""
    count = failures.count()
    if count < allowed:
        return False
    delay = min(cap_seconds, settings.LOGIN_LOCK_SECONDS * 2 ** min(count - allowed, 30))
    last = failures.order_by("-created_at").values_list("created_at", flat=True).first()
    return timezone.now() < last + timedelta(seconds=delay)


def _known_address(username: str, address: str | None) -> bool:
    """The user completed a sign-in from this address lately (the audit log's user.login)."""
    if not address:
        return False
    return AuditEntry.objects.filter(
        action="user.login", user__username__iexact=username, address=address,
        created_at__gte=_since(settings.LOGIN_KNOWN_ADDRESS_DAYS * 86400),
    ).exists()


def is_locked_out(username: str, address: str | None) -> bool:
    """May this address not try a password for this username now?"""
    username = username.lower()
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    recent = LoginFailure.objects.filter(kind=PASSWORD, created_at__gte=_since(window))
    if _growing_lock(recent.filter(username=username, address=address), settings.LOGIN_MAX_FAILURES, window):
        return True
    if address and recent.filter(address=address).count() >= settings.LOGIN_ADDRESS_MAX_FAILURES:
        return True
    by_user = LoginFailure.objects.filter(kind=PASSWORD, username=username,
                                          created_at__gte=_since(settings.LOGIN_USER_WINDOW_SECONDS)).count()
    return by_user >= settings.LOGIN_USER_MAX_FAILURES and not _known_address(username, address)


def _prune() -> None:
    longest = max(settings.LOGIN_FAILURE_WINDOW_SECONDS, settings.LOGIN_USER_WINDOW_SECONDS,
                  settings.OTP_FAILURE_WINDOW_SECONDS)
    LoginFailure.objects.filter(created_at__lt=_since(longest)).delete()


def record_failure(username: str, address: str | None) -> None:
    LoginFailure.objects.create(username=username.lower(), address=address, kind=PASSWORD)
    _prune()


def clear_failures(username: str, address: str | None) -> None:
    """After a right password: forget this username's failures from this address, nothing else."""
    LoginFailure.objects.filter(kind=PASSWORD, username=username.lower(), address=address).delete()


def _code_failures(username: str):
    return LoginFailure.objects.filter(kind=CODE, username=username.lower(),
                                       created_at__gte=_since(settings.OTP_FAILURE_WINDOW_SECONDS))


def code_locked(username: str) -> bool:
    """Must a second-factor code for this user wait (from any address, any session)?"""
    return _growing_lock(_code_failures(username), settings.OTP_MAX_FAILURES, settings.OTP_FAILURE_WINDOW_SECONDS)


def record_code_failure(username: str, address: str | None) -> bool:
    """Count a wrong code; True when the user is now past OTP_MAX_FAILURES (the half-signed-in
    session must end, so the password is needed again)."""
    LoginFailure.objects.create(username=username.lower(), address=address, kind=CODE)
    _prune()
    return _code_failures(username).count() >= settings.OTP_MAX_FAILURES


def clear_code_failures(username: str) -> None:
    LoginFailure.objects.filter(kind=CODE, username=username.lower()).delete()
