"""Issuing and consuming console tokens."""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from novnc.models import ConsoleToken
from panel.accounts import audit
from panel import limits
from panel.accounts.tenancy import Actor
from panel.refusals import Refused
from panel.vps.models import ServerState, VirtualServer


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def console_refusal(server: VirtualServer) -> str:
    """'' when the server's console may be opened now, else why not."""
    # state_before_suspend is set when a suspension is requested: access ends at once, not
    # when the guest has finished shutting down.
    if server.state == ServerState.SUSPENDED or server.state_before_suspend:
        return _("The server is suspended: %(reason)s") % {"reason": server.suspend_reason or _("no reason given")}
    if server.state != ServerState.RUNNING:
        return _("The server is not running.")
    return ""


def issue(actor: Actor, server_id: int) -> tuple[ConsoleToken, str]:
    """A token for `actor` to open the console of a server it can see (else Http404)."""
    server = actor.get_or_404(VirtualServer.objects.all(), pk=server_id)
    why = console_refusal(server)
    if why:
        raise Refused(why, "console_unavailable", 409)
    limits.check_new_console_token(actor, server)
    raw = secrets.token_urlsafe(32)
    token = ConsoleToken.objects.create(
        key_hash=_hash(raw), server=server, user=actor.user, api_key=actor.api_key, customer_id=server.customer_id,
        expires_at=timezone.now() + timedelta(seconds=settings.CONSOLE_TOKEN_SECONDS))
    audit.record(actor, "server.console", server)
    return token, raw


def peek(raw: str) -> ConsoleToken | None:
    """The unused, unexpired token for `raw`, without using it (for the page that hosts noVNC)."""
    return ConsoleToken.objects.filter(key_hash=_hash(raw), used_at__isnull=True,
                                       expires_at__gt=timezone.now()).select_related("server").first()


def consume(raw: str, user) -> ConsoleToken | None:
    """Use the token once: None when it is unknown, used, expired, or another user's."""
    token = peek(raw)
    if token is None:
        return None
    if token.user_id is not None and (user is None or not user.is_authenticated or user.pk != token.user_id):
        return None
    # The update is the claim: of two connections racing with one token, only one wins.
    claimed = ConsoleToken.objects.filter(pk=token.pk, used_at__isnull=True).update(used_at=timezone.now())
    return token if claimed else None


def still_allowed(token: ConsoleToken) -> bool:
    """The session may go on: the server exists, is running, and has the same owner."""
    server = VirtualServer.objects.filter(pk=token.server_id).first()
    return server is not None and server.customer_id == token.customer_id and not console_refusal(server)
