"""The panel's one settings module: everything comes from environment variables.

Safe defaults make the quick start need no configuration: SQLite in the data folder, a
generated SECRET_KEY, the ORM as django-q2 broker and an in-memory channel layer.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from panel.env import email_settings, envbool, envint, envlist, envstr, parse_tiers, secret_in_file

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(envstr("PANEL_DATA_DIR", str(BASE_DIR / "data"))).resolve()

SECRET_KEY = envstr("SECRET_KEY") or secret_in_file(DATA_DIR / "secret_key")
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["*"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
# Behind a reverse proxy: take the client's address (login throttle, audit, the install-config
# address check) and scheme from its X-Forwarded-* headers. Off, nobody can forge them.
TRUSTED_PROXY = envbool("TRUSTED_PROXY", False)
# The proxies' own addresses (or networks): X-Forwarded-* count only from these, and
# X-Forwarded-For's hops are skipped from the right while they are one (panel/forwarded.py).
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", ["127.0.0.1", "::1"])
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_TLS_PROXY", False) else None

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "django_q",
    "channels",
    "panel",
    "panel.accounts",
    "panel.vps",
    "panel.api",
    "panel.ipam",
    "panel.webhooks",
    "panel.usage",
    "panel.metrics",
    "panel.alerts",
    "panel.images",
    "panel.ui",
    "nodes",
    "novnc",
    "templates_os",
    "recipes",
    "backup",
]

MIDDLEWARE = [
    # First: counts every answer, the other middlewares' included (/metrics, panel/metrics/prometheus.py).
    "panel.metrics.prometheus.RequestCounter",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "panel.accounts.middleware.UserLanguageMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "panel.accounts.middleware.SessionActivityMiddleware",
    "panel.accounts.middleware.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "panel.urls"
ASGI_APPLICATION = "panel.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'panel.sqlite3'}"), conn_max_age=envint("DB_CONN_MAX_AGE", 0)
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {}).update({"charset": "utf8mb4", "isolation_level": "read committed"})
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker write concurrently; WAL + a busy timeout keep SQLite usable.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "ui:login"
LOGIN_REDIRECT_URL = "ui:home"
LOGOUT_REDIRECT_URL = "ui:login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ru", _("Russian"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
# noVNC and uPlot (the graphs) come from npm (`make` runs `npm ci`), never copied into the repository.
STATICFILES_DIRS = [("novnc", BASE_DIR / "node_modules" / "@novnc" / "novnc"),
                    ("uplot", BASE_DIR / "node_modules" / "uplot" / "dist")]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

SESSION_COOKIE_HTTPONLY = True
# Behind TLS (BEHIND_TLS_PROXY) cookies are https-only and browsers are told to use https only
# (HSTS); each can be turned off on its own.
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", envbool("BEHIND_TLS_PROXY", False))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = envint("HSTS_SECONDS", 31536000 if envbool("BEHIND_TLS_PROXY", False) else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("HSTS_INCLUDE_SUBDOMAINS", False)
# A session ends after this long without a request (sliding), and this long after sign-in
# whatever happens (panel.accounts.sessions). The cookie and the stored session last a minute
# longer than the idle time, since the sliding update is written at most once a minute.
SESSION_IDLE_SECONDS = envint("SESSION_IDLE_SECONDS", 1800)
SESSION_MAX_SECONDS = envint("SESSION_MAX_SECONDS", 12 * 3600)
SESSION_COOKIE_AGE = SESSION_IDLE_SECONDS + 60
# Provider admins must have a second factor: one without is sent to set it up first.
REQUIRE_ADMIN_2FA = envbool("REQUIRE_ADMIN_2FA", False)

REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    # The worker runs in another process, so it cannot reach an in-memory layer; the UI then
    # falls back to polling the Operation (see panel/progress.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The API's rate limits count in Redis when there is one, so every process (web workers, the
# qcluster worker) sees the same counts; without it they count in the database (RateCount).
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}

Q_CLUSTER = {
    "name": "panel",
    "workers": envint("WORKERS", 2),
    "timeout": envint("TASK_TIMEOUT", 3600),
    # Longer than any task: a task is re-delivered only when its worker died; run_operation is
    # idempotent and the reconciler settles operations whose worker vanished.
    "retry": envint("TASK_TIMEOUT", 3600) + 60,
    "max_attempts": 1,
    "catch_up": False,
    # How often the ORM broker looks for new tasks: the floor of an action's latency.
    "poll": float(envstr("Q_POLL", "0.1")),
    "save_limit": 1000,
    "sync": envbool("Q_SYNC", False),
    "label": "Tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "panel.accounts.api_auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "panel.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["panel.api.filters.PanelFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "panel.api.schema.PanelAutoSchema",
    "EXCEPTION_HANDLER": "panel.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["panel.api.throttling.KeyRateThrottle", "panel.api.throttling.AddressRateThrottle"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Panel API",
    "DESCRIPTION": "REST API v1 of the KVM VPS panel, for billing systems and scripts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Two models have a `status`: keep the operations' enum named as before webhooks came.
    "ENUM_NAME_OVERRIDES": {"StatusEnum": "panel.vps.models.Operation.Status",
                            "DeliveryStatusEnum": "panel.webhooks.models.Delivery.Status",
                            "ScopeEnum": "panel.accounts.models.ApiKey.Scope",
                            "BackupScopeEnum": "backup.models.BackupPlan.Scope",
                            "BackupStatusEnum": "backup.models.Backup.Status",
                            "BackupKindEnum": "backup.models.Backup.Kind"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- The panel's own knobs -------------------------------------------------------------------
# Sign-in throttling (panel/accounts/throttle.py). Per (username, address): this many failed
# passwords within the window lock the pair for LOGIN_LOCK_SECONDS, doubling with each further
# failure (at most the window); per address: LOGIN_ADDRESS_MAX_FAILURES within the window, any
# usernames; per username from everywhere: past LOGIN_USER_MAX_FAILURES within the user window
# only addresses it signed in from within LOGIN_KNOWN_ADDRESS_DAYS may still try.
LOGIN_MAX_FAILURES = envint("LOGIN_MAX_FAILURES", 5)
LOGIN_FAILURE_WINDOW_SECONDS = envint("LOGIN_FAILURE_WINDOW_SECONDS", 900)
LOGIN_LOCK_SECONDS = envint("LOGIN_LOCK_SECONDS", 60)
LOGIN_ADDRESS_MAX_FAILURES = envint("LOGIN_ADDRESS_MAX_FAILURES", 3 * LOGIN_MAX_FAILURES)
LOGIN_USER_MAX_FAILURES = envint("LOGIN_USER_MAX_FAILURES", 100)
LOGIN_USER_WINDOW_SECONDS = envint("LOGIN_USER_WINDOW_SECONDS", 86400)
LOGIN_KNOWN_ADDRESS_DAYS = envint("LOGIN_KNOWN_ADDRESS_DAYS", 30)
# Second-factor codes, per user: this many wrong ones end the half-signed-in session (the
# password again) and make each further code wait LOGIN_LOCK_SECONDS, doubling, for as long as
# the failures are kept (a right code clears them).
OTP_MAX_FAILURES = envint("OTP_MAX_FAILURES", 5)
OTP_FAILURE_WINDOW_SECONDS = envint("OTP_FAILURE_WINDOW_SECONDS", 86400)
# Graceful stop waits this long for the guest to power off before forcing it.
STOP_TIMEOUT_SECONDS = envint("STOP_TIMEOUT_SECONDS", 60)
# How long a running guest has to release a data disk being deleted (panel/images/disk_jobs.py).
DISK_DETACH_TIMEOUT_SECONDS = envint("DISK_DETACH_TIMEOUT_SECONDS", 30)
# A running operation whose heartbeat is older than this lost its worker.
OPERATION_STALE_SECONDS = envint("OPERATION_STALE_SECONDS", 120)
RECONCILE_INTERVAL_MINUTES = envint("RECONCILE_INTERVAL_MINUTES", 1)
IDEMPOTENCY_TTL_HOURS = 24
# Monitoring tiers, finest first: "step:retention" with s/m/h/d suffixes (panel/metrics/store.py).
# The default keeps 1 min for 48 h, 5 min for 35 days, 1 h for 400 days and 1 day for 5 years.
METRICS_TIERS = parse_tiers(envstr("METRICS_TIERS", "1m:48h,5m:35d,1h:400d,1d:1825d"))
# How long the minute's collection waits for one node's statistics before it writes a gap.
METRICS_NODE_DEADLINE_SECONDS = envint("METRICS_NODE_DEADLINE_SECONDS", 20)
# Alerts (panel/alerts, docs/monitoring.md). Mail goes out through EMAIL_URL: smtp://user:pass@host:port,
# smtp+tls:// (STARTTLS), smtp+ssl://, console:// (printed to the log, the default) or off://; from
# EMAIL_FROM. The provider's alerts are mailed to ALERTS_EMAIL_TO (comma-separated; empty: every
# admin user's address) and, with ALERTMANAGER_URL (e.g. http://127.0.0.1:9093), posted to that
# Alertmanager. PANEL_URL is how people reach the panel, for links in mails and alerts.
_EMAIL = email_settings(envstr("EMAIL_URL", "console://"))
EMAIL_BACKEND, EMAIL_HOST, EMAIL_PORT = _EMAIL["EMAIL_BACKEND"], _EMAIL["EMAIL_HOST"], _EMAIL["EMAIL_PORT"]
EMAIL_HOST_USER, EMAIL_HOST_PASSWORD = _EMAIL["EMAIL_HOST_USER"], _EMAIL["EMAIL_HOST_PASSWORD"]
EMAIL_USE_TLS, EMAIL_USE_SSL = _EMAIL["EMAIL_USE_TLS"], _EMAIL["EMAIL_USE_SSL"]
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = SERVER_EMAIL = envstr("EMAIL_FROM", "panel@localhost")
ALERTS_EMAIL_TO = envlist("ALERTS_EMAIL_TO", [])
ALERTMANAGER_URL = envstr("ALERTMANAGER_URL").rstrip("/")
PANEL_URL = envstr("PANEL_URL").rstrip("/")
# The local node: registered by runpanel when libvirt answers at this URI.
LOCAL_LIBVIRT_URI = envstr("LOCAL_LIBVIRT_URI", "qemu:///system")
# The local node's cluster gets a NAT network of this range (bridge pnl-local) when it has none,
# so demo servers have an address and reach the panel. Empty: no such network.
LOCAL_NAT_CIDR = envstr("LOCAL_NAT_CIDR", "192.168.223.0/24")
# Where the local node keeps server disks (a libvirt directory pool of that path).
STORAGE_DIR = Path(envstr("STORAGE_DIR", "/var/lib/libvirt/images/panel"))
# The OS template share: one folder per template (templates_os/). In production an NFS share
# mounted at the same path on the panel and on every node, since nodes boot the files in place.
# QEMU (a user of its own) reads them: as root (the host is its own node) the default lies
# outside the checkout, whose folders (/root/…) QEMU may not enter.
TEMPLATE_SHARE = Path(envstr("TEMPLATE_SHARE", "/var/lib/panel/os-templates" if os.geteuid() == 0
                             else str(DATA_DIR / "os-templates")))
# How guests reach the panel to fetch their install config and call back, e.g.
# "http://panel.example.net:8000". Empty: http://<this host's address towards the node>:PORT.
PROVISION_URL = envstr("PROVISION_URL", "").rstrip("/")
PANEL_PORT = envint("PORT", 8000)
# The demo OS's kernel and initrd, as deploy/build_demo_os.sh builds them (make run does);
# runpanel lays them out on the share as the `tiny` template.
TINY_GUEST_DIR = Path(envstr("TINY_GUEST_DIR", str(BASE_DIR / ".cache" / "tiny-guest")))
# Encrypts node credentials at rest (panel/crypto.py); keep it with your backups.
CREDENTIALS_KEY = envstr("CREDENTIALS_KEY") or secret_in_file(DATA_DIR / "credentials_key")
# Encrypts the panel's own backups (backup/panel_state.py); generated into DATA_DIR/backup_key
# when unset. Keep a copy away from the panel: without it a panel backup cannot be read.
PANEL_BACKUP_KEY = envstr("PANEL_BACKUP_KEY")
# SSH client files (the panel's key, known_hosts of pinned node keys) for libvirt's ssh transport.
SSH_DIR = DATA_DIR / "ssh"
# Node health: every node is checked this often; libvirt keepalive notices a dead link too.
HEALTH_INTERVAL_SECONDS = envint("HEALTH_INTERVAL_SECONDS", 5)
# How placement ranks the nodes that fit: "spread" (most free RAM first) or "pack".
PLACEMENT_WEIGHER = envstr("PLACEMENT_WEIGHER", "spread")
# A released IP address waits this long before it is handed out again (per pool, this default).
IP_QUARANTINE_MINUTES = envint("IP_QUARANTINE_MINUTES", 24 * 60)
# A console token must be used (the websocket opened) within this many seconds.
CONSOLE_TOKEN_SECONDS = envint("CONSOLE_TOKEN_SECONDS", 60)
# Webhooks: a receiver must answer within this many seconds; a failed delivery is retried after
# the base delay, doubling each time up to 1 h, for 25 h. Webhooks reach only public addresses,
# whoever made them, except for the scopes WEBHOOKS_ALLOW_PRIVATE names (admin, billing,
# customer; "1" names all three): a webhook is a request from inside the panel's network.
WEBHOOK_TIMEOUT_SECONDS = envint("WEBHOOK_TIMEOUT_SECONDS", 10)
WEBHOOK_RETRY_BASE_SECONDS = envint("WEBHOOK_RETRY_BASE_SECONDS", 30)
WEBHOOKS_ALLOW_PRIVATE = (["admin", "billing", "customer"] if envbool("WEBHOOKS_ALLOW_PRIVATE", False) else
                          [] if envstr("WEBHOOKS_ALLOW_PRIVATE").strip().lower() in ("", "0", "false", "no", "off")
                          else envlist("WEBHOOKS_ALLOW_PRIVATE", []))
if set(WEBHOOKS_ALLOW_PRIVATE) - {"admin", "billing", "customer"}:
    raise ImproperlyConfigured(f"WEBHOOKS_ALLOW_PRIVATE: unknown scope in {WEBHOOKS_ALLOW_PRIVATE}; "
                               "name admin, billing and/or customer")
# Rate limits of the API (panel/api/throttling.py), "<count>/<second|minute|hour|day>": requests
# per API key (or session user), and per client address whoever is calling (failed logins
# included). Counted in Redis or the database, shared by every process. docs/security.md.
API_RATE_PER_KEY = envstr("API_RATE_PER_KEY", "600/minute")
API_RATE_PER_ADDRESS = envstr("API_RATE_PER_ADDRESS", "1200/minute")
# Per-customer bounds (panel/limits.py), for every caller but the provider's admins: servers,
# active API keys and webhooks a customer may have, console URLs per minute and backups started
# per hour. Billing keys count their (provider-wide) webhooks together as one owner.
LIMIT_SERVERS_PER_CUSTOMER = envint("LIMIT_SERVERS_PER_CUSTOMER", 100)
LIMIT_API_KEYS_PER_CUSTOMER = envint("LIMIT_API_KEYS_PER_CUSTOMER", 20)
LIMIT_WEBHOOKS_PER_CUSTOMER = envint("LIMIT_WEBHOOKS_PER_CUSTOMER", 10)
LIMIT_CONSOLE_TOKENS_PER_MINUTE = envint("LIMIT_CONSOLE_TOKENS_PER_MINUTE", 10)
LIMIT_BACKUPS_PER_HOUR = envint("LIMIT_BACKUPS_PER_HOUR", 10)
# The GiB of ISOs a customer may upload (panel/images/isos.py); the rescue kernel and initrd
# (empty: the tiny demo OS's on the template share).
LIMIT_ISO_GIB_PER_CUSTOMER = envint("LIMIT_ISO_GIB_PER_CUSTOMER", 5)
RESCUE_KERNEL = envstr("RESCUE_KERNEL", "")
RESCUE_INITRD = envstr("RESCUE_INITRD", "")
# Identifies this panel's domains in libvirt metadata, so two panels sharing a host never
# touch each other's domains.
PANEL_INSTANCE_ID = envstr("PANEL_INSTANCE_ID") or secret_in_file(DATA_DIR / "instance_id", 6)
# /metrics for Prometheus (panel/metrics/prometheus.py, docs/monitoring.md): scraped with
# "Authorization: Bearer <METRICS_TOKEN>", or without a token from the addresses or networks
# of METRICS_ALLOW_FROM; with neither set the URL answers 404.
METRICS_TOKEN = envstr("METRICS_TOKEN")
METRICS_ALLOW_FROM = envlist("METRICS_ALLOW_FROM", [])
# prometheus-client's multiprocess mode: each process of the panel (web processes, the worker)
# counts into its own files here and a scrape adds them up. Set before anything imports
# prometheus_client, which reads it then; always this panel's folder, never one inherited from
# the process that started it (another panel's); runpanel removes gone processes' files.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(DATA_DIR / "prometheus")
