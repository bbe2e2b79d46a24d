"""The API's rate limits: requests per API key (or session user) and per client address.

Counted where every web process and the worker see the same counts (a per-process count
would let N processes through N times the rate): Redis when there is one (CACHES["default"]),
else the database's RateCount table, one statement a request and limit. Over the limit the answer is 429 `throttled` with
Retry-After, in the API's error format (errors.py); a request with a wrong key counts
against its address too (errors.py asks `address_allows` before it answers 401).

Fixed windows (the count restarts at each whole minute, hour, …) rather than DRF's sliding
history: one counter per caller instead of a list of timestamps rewritten on every request.
A caller may so get up to twice the rate across a window's edge; the limits are against
floods, not for billing.
"""

import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import F
from rest_framework.throttling import BaseThrottle

from panel.accounts.models import ApiKey
from panel.accounts.tenancy import client_address
from panel.api.models import RateCount

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(name: str) -> tuple[int, int]:
    """settings.<name>, "<count>/<second|minute|hour|day>", as (count, seconds)."""
    value = str(getattr(settings, name))
    count, _, period = value.partition("/")
    if not count.strip().isdigit() or not period.strip()[:1] in PERIODS:
        raise ImproperlyConfigured(f"{name}={value!r}: write <count>/<second|minute|hour|day>, e.g. 600/minute")
    return int(count), PERIODS[period.strip()[0]]


class WindowThrottle(BaseThrottle):
    """At most `rate` requests per window for one caller (`ident`); None: not counted here."""

    setting = ""  # the settings name of the rate
    scope = ""

    def ident(self, request) -> str | None:
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        ident = self.ident(request)
        if ident is None:
            return True
        limit, period = parse_rate(self.setting)
        now = time.time()
        window = int(now // period)
        self.retry_after = (window + 1) * period - now
        key = f"throttle:{self.scope}:{ident}:{period}:{window}"
        timeout = int(self.retry_after) + 1  # the counter lasts as long as its window
        store = caches["default"]
        if isinstance(store, RedisCache):
            store.add(key, 0, timeout=timeout)
            used = store.incr(key)  # atomic, and it keeps the expiry
        else:
            used = count_in_database(key, int(now) + timeout)
        return used <= limit

    def wait(self) -> float:
        return self.retry_after


def count_in_database(caller: str, expires: int) -> int:
    """One more request for `caller` in the RateCount table; returns its count. One atomic
    statement on MariaDB/MySQL and SQLite (Django's database cache took six, and a read then a
    write, so concurrent requests could count once)."""
    table = connection.ops.quote_name(RateCount._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            # LAST_INSERT_ID(expr) hands the updated count back as the insert id; a new row (no
            # auto-increment column) gives 0.
            cursor.execute(f"INSERT INTO {table} (caller, used, expires) VALUES (%s, 1, %s) "
                           "ON DUPLICATE KEY UPDATE used = LAST_INSERT_ID(used + 1)", [caller, expires])
            used = cursor.lastrowid or 1
        elif connection.vendor == "sqlite":
            cursor.execute(f"INSERT INTO {table} (caller, used, expires) VALUES (%s, 1, %s) "
                           "ON CONFLICT (caller) DO UPDATE SET used = used + 1 RETURNING used", [caller, expires])
            used = cursor.fetchone()[0]
        else:
            RateCount.objects.get_or_create(caller=caller, defaults={"used": 0, "expires": expires})
            RateCount.objects.filter(caller=caller).update(used=F("used") + 1)
            used = RateCount.objects.get(caller=caller).used
    if used == 1:  # a caller's new window: the time to forget ended ones
        RateCount.objects.filter(expires__lt=int(time.time())).delete()
    return used


class KeyRateThrottle(WindowThrottle):
    """Per API key, or per user for session callers (the UI's own API calls)."""

    setting = "API_RATE_PER_KEY"
    scope = "key"

    def ident(self, request) -> str | None:
        if isinstance(request.auth, ApiKey):
            return f"k{request.auth.pk}"
        user = request.user
        return f"u{user.pk}" if user is not None and user.is_authenticated else None


class AddressRateThrottle(WindowThrottle):
    """Per client address (settings.TRUSTED_PROXY decides whose), whoever is calling."""

    setting = "API_RATE_PER_ADDRESS"
    scope = "address"

    def ident(self, request) -> str | None:
        return client_address(request)


def address_allows(request) -> tuple[bool, float]:
    """Count a request that did not get past the key check against its address: (allowed, wait)."""
    throttle = AddressRateThrottle()
    return throttle.allow_request(request, None), throttle.wait()
