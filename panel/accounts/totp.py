"""Optional TOTP second factor (RFC 6238) for users.

A code is accepted once: the user's last accepted time step is remembered, and a code of that
step or an earlier one is refused (RFC 6238 §5.2), so one code cannot open two sessions.
"""

import hmac
from datetime import datetime, timezone

import pyotp
from django.db.models import Q

ISSUER = "Panel"


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def matching_step(secret: str, code: str) -> int | None:
    """The time step (now, or one either side for clock drift) whose code this is, or None."""
    code = (code or "").strip().replace(" ", "")
    if not secret or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    now = totp.timecode(datetime.now(timezone.utc))
    for step in (now, now - 1, now + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def verify(secret: str, code: str) -> bool:
    """A code for a secret no one has used yet (turning the second factor on)."""
    return matching_step(secret, code) is not None


def accept(user, code: str) -> bool:
    """Check `code` against the user's secret and use it up; False when wrong or already used."""
    from panel.accounts.models import User

    step = matching_step(user.totp_secret, code)
    if step is None:
        return False
    # The update is the claim: of two sessions racing with one code, only one moves the step.
    claimed = User.objects.filter(pk=user.pk).filter(
        Q(totp_last_step__isnull=True) | Q(totp_last_step__lt=step)).update(totp_last_step=step)
    if claimed:
        user.totp_last_step = step
    return bool(claimed)


def remember(user, secret: str, code: str) -> None:
    """The code that turned the second factor on is used up too."""
    step = matching_step(secret, code)
    if step is not None:
        user.totp_last_step = step
