"""The page that hosts noVNC: from the server page (a session), or from a URL the API gave."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse

from novnc import tokens
from panel.accounts.tenancy import actor
from panel.refusals import Refused


@login_required
def console(request, server_id: int):
    """Issue a one-time token for this user and server, and show the console."""
    try:
        token, raw = tokens.issue(actor(request), server_id)
    except Refused as exc:
        messages.error(request, exc.message)
        return redirect("ui:server", server_id=server_id)
    return _page(request, token, raw, back=reverse("ui:server", args=[server_id]))


def console_by_token(request, token: str):
    """A console URL handed out by the API: the token is the credential (used on connect)."""
    found = tokens.peek(token)
    if found is None:
        raise Http404
    return _page(request, found, token, back="")


def _page(request, token, raw: str, back: str):
    response = render(request, "novnc/console.html", {
        "server": token.server, "ws_path": f"/ws/console/{raw}/", "expires_at": token.expires_at,
        "back_url": back,
    })
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    return response
