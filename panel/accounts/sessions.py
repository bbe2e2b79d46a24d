"""Browser sessions: the idle and absolute lifetimes, the user's own list of them, ending them,
and whether a websocket opened by one may go on.

A session's times live in the session itself (SINCE: when it was first seen signed in, SEEN:
the last request, written at most once a TOUCH_SECONDS so that reading pages does not turn into
writes); a UserSession row mirrors them for the sessions page.
"""

import time
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.models import Session
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from panel.accounts.models import User, UserSession

SINCE = "panel_session_since"
SEEN = "panel_session_seen"
TRACKED = "panel_session_tracked"
TOUCH_SECONDS = 60


def _store(session_key: str):
    from importlib import import_module

    return import_module(settings.SESSION_ENGINE).SessionStore(session_key)


def expired(session, now: float | None = None) -> bool:
    """Past the idle lifetime (no request for SESSION_IDLE_SECONDS) or the absolute one."""
    now = time.time() if now is None else now
    seen, since = session.get(SEEN), session.get(SINCE)
    return bool((seen and now - seen > settings.SESSION_IDLE_SECONDS)
                or (since and now - since > settings.SESSION_MAX_SECONDS))


def touch(request, address: str | None, pending: bool) -> None:
    """Note this request in the session (and its row, unless a second factor is pending)."""
    session, now = request.session, time.time()
    session.setdefault(SINCE, now)
    fresh = not session.get(SEEN) or now - session[SEEN] >= TOUCH_SECONDS
    if fresh:
        session[SEEN] = now  # a write: the session's expiry slides (SESSION_COOKIE_AGE) with it
    if pending:
        return
    if session.session_key is None:
        session.save()
    if fresh or session.get(TRACKED) != session.session_key:
        stamp = lambda seconds: datetime.fromtimestamp(seconds, dt_timezone.utc)  # noqa: E731
        UserSession.objects.update_or_create(
            session_key=session.session_key,
            defaults={"user": request.user, "last_seen_at": stamp(session[SEEN]), "address": address,
                      "user_agent": request.META.get("HTTP_USER_AGENT", "")[:300]},
            create_defaults={"user": request.user, "created_at": stamp(session[SINCE]),
                             "last_seen_at": stamp(session[SEEN]), "address": address,
                             "user_agent": request.META.get("HTTP_USER_AGENT", "")[:300]},
        )
        session[TRACKED] = session.session_key


def of_user(user) -> list[UserSession]:
    """The user's live sessions, newest first; rows of sessions that are gone are dropped."""
    rows = list(UserSession.objects.filter(user=user))
    live = set(Session.objects.filter(session_key__in=[r.session_key for r in rows],
                                      expire_date__gt=timezone.now()).values_list("session_key", flat=True))
    UserSession.objects.filter(pk__in=[r.pk for r in rows if r.session_key not in live]).delete()
    return [r for r in rows if r.session_key in live]


def end(row: UserSession) -> None:
    _store(row.session_key).delete()
    row.delete()


def end_all(user) -> int:
    """End every session of the user, listed or not (one from before the list existed, too)."""
    keys = set(UserSession.objects.filter(user=user).values_list("session_key", flat=True))
    for session in Session.objects.filter(expire_date__gt=timezone.now()).exclude(session_key__in=keys).iterator():
        if str(session.get_decoded().get(SESSION_KEY)) == str(user.pk):
            keys.add(session.session_key)
    for key in keys:
        _store(key).delete()
    UserSession.objects.filter(user=user).delete()
    return len(keys)


def still_signed_in(session_key: str | None, user_id) -> bool:
    """May a websocket opened by this session as this user go on? No once the session was
    ended (signed out, here or from the sessions page), the user deactivated, or the password
    changed. Expiry by idleness does not end an open console: the socket is the activity."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return False
    if session_key is None:
        return True  # a socket without a session (tests driving the consumer directly)
    row = Session.objects.filter(session_key=session_key).first()
    if row is None:
        return False
    data = row.get_decoded()
    if str(data.get(SESSION_KEY)) != str(user.pk) or not data.get(BACKEND_SESSION_KEY):
        return False
    return constant_time_compare(data.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash())
