"""Typed readers for settings that come from environment variables."""

import os
import secrets
from pathlib import Path


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "")
    return [item.strip() for item in value.split(",") if item.strip()] if value else default


def secret_in_file(path: Path, nbytes: int = 48) -> str:
    """Read a secret from `path`, creating it (mode 0600) on first use.

    Used for SECRET_KEY and the credentials key when the environment does not give
    them, so a fresh install is secure without any configuration.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(nbytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> int:
    text = text.strip()
    if not text or text[-1] not in _UNITS or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise ValueError(f"not a duration such as 5m, 48h or 35d: {text!r}")
    return int(text[:-1]) * _UNITS[text[-1]]


def parse_tiers(text: str) -> list[tuple[int, int]]:
    """"1m:48h,5m:35d" → [(60, 172800), (300, 3024000)]: each step divides the next, finest first."""
    tiers = []
    for part in text.split(","):
        step, _, keep = part.partition(":")
        tiers.append((_seconds(step), _seconds(keep)))
    for (fine, _), (coarse, _) in zip(tiers, tiers[1:]):
        if coarse <= fine or coarse % fine:
            raise ValueError(f"METRICS_TIERS: each step must be a multiple of the one before: {text!r}")
    if not tiers:
        raise ValueError("METRICS_TIERS: at least one tier")
    return tiers


def email_settings(url: str) -> dict:
    """EMAIL_URL → Django's mail settings: `smtp://user:pass@host:port` (plain SMTP, port 25),
    `smtp+tls://…` (STARTTLS, port 587), `smtp+ssl://…` (TLS from the start, port 465),
    `console://` (mails printed to the log), `off://` (none sent); the user and password
    percent-encoded where they hold `@`, `:` or `/`."""
    from urllib.parse import unquote, urlsplit

    backends = {"console": "django.core.mail.backends.console.EmailBackend",
                "off": "django.core.mail.backends.dummy.EmailBackend",
                "locmem": "django.core.mail.backends.locmem.EmailBackend"}
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in backends:
        return {"EMAIL_BACKEND": backends[scheme], "EMAIL_HOST": "localhost", "EMAIL_PORT": 25, "EMAIL_HOST_USER": "",
                "EMAIL_HOST_PASSWORD": "", "EMAIL_USE_TLS": False, "EMAIL_USE_SSL": False}
    ports = {"smtp": 25, "smtp+tls": 587, "smtp+ssl": 465}
    if scheme not in ports:
        raise ValueError(f"EMAIL_URL: not smtp://, smtp+tls://, smtp+ssl://, console:// or off://: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"EMAIL_URL: bad port in {url!r}") from exc
    if not parts.hostname:
        raise ValueError(f"EMAIL_URL: no host in {url!r}")
    return {"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": parts.hostname,
            "EMAIL_PORT": port or ports[scheme], "EMAIL_HOST_USER": unquote(parts.username or ""),
            "EMAIL_HOST_PASSWORD": unquote(parts.password or ""), "EMAIL_USE_TLS": scheme == "smtp+tls",
            "EMAIL_USE_SSL": scheme == "smtp+ssl"}
