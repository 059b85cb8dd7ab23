"""Settings of the platform. Every value that differs between installations comes from the
environment, read here and nowhere else (see docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from flespi_site import topology as _topology

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number; set it like {name}={default}") from None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number of seconds; set it like {name}={default:g}") from None


def _env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _env_bool("DEBUG", False)
# Outside debug a process refuses to start without it (``flespi_site.preflight``); the embedded
# services of `make run` and `make test` generate one.
SECRET_KEY_GIVEN = bool(os.environ.get("SECRET_KEY"))
SECRET_KEY = os.environ.get("SECRET_KEY") or "insecure-development-key-only-with-DEBUG"
ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", "*")

# Behind a TLS-terminating reverse proxy (docs/deployment.md, "TLS"): the origins the admin's forms
# come from, and the header by which the proxy says the request came over HTTPS.
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS")
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    _header, _, _value = os.environ["SECURE_PROXY_SSL_HEADER"].partition("=")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _header.strip().upper().replace("-", "_"), _value.strip() or "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
USE_X_FORWARDED_HOST = _env_bool("USE_X_FORWARDED_HOST", False)

# Where the platform keeps its own files when no more specific variable says: the first admin's
# password, the calc workers' caches, the metrics files (a volume, in a container).
STATE_DIR = Path(os.environ.get("FLESPI_STATE_DIR") or BASE_DIR / "var")

TOPOLOGY = _topology.current()
# In production a process serves one region; in development and tests (empty) it serves all.
SERVED_REGION = os.environ.get("REGION", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "regions",
    "accounts",
    "devices",
    "analytics",
    "webhooks",
]

MIDDLEWARE = [
    # probes of /health/* come by any address: answered before the host is checked
    "flespi_site.health.HealthMiddleware",
    # first: a chunked request body gets its Content-Length before anything reads the body
    "flespi_site.middleware.ChunkedBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "regions.middleware.RegionHostMiddleware",
]

ROOT_URLCONF = "flespi_site.urls"
WSGI_APPLICATION = "flespi_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "flespi_site" / "templates"],
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


def _database(url: str) -> dj_database_url.DBConfig:
    config = dj_database_url.parse(url, conn_max_age=_env_int("DB_CONN_MAX_AGE", 60))
    # a database that does not answer fails a connection in seconds, not after the system's timeout
    config.setdefault("OPTIONS", {}).setdefault("connect_timeout", _env_int("DB_CONNECT_TIMEOUT", 5))
    config["TEST"] = {"NAME": "test_" + config["NAME"]}
    return config


# "default" is the control database (regions, datacenters, the account tree, tokens, admin
# users); every datacenter is its own database under the alias "dc_<code>".
DATABASES = {"default": _database(TOPOLOGY.control_database_url)}
for _dc in TOPOLOGY.datacenters:
    DATABASES[_dc.alias] = _database(_dc.database_url)

DATABASE_ROUTERS = ["flespi_site.db_router.PlacementRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Only needed for `collectstatic` behind a separate web server.
STATIC_ROOT = os.environ.get("STATIC_ROOT") or None
# Static files (admin, the offline API docs UI) are served by the app itself, from the installed
# packages, with no collectstatic step.
WHITENOISE_USE_FINDERS = True

# Request limits. The JSON parser enforces the body limit itself so that an oversized body gets
# a 413 with the envelope rather than Django's bare 400.
MAX_BODY_BYTES = _env_int("MAX_BODY_BYTES", 16 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
MAX_JSON_DEPTH = _env_int("MAX_JSON_DEPTH", 16)
MAX_BATCH_ITEMS = _env_int("MAX_BATCH_ITEMS", 10_000)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["flespi_site.api.authentication.FlespiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["flespi_site.api.permissions.HasToken"],
    "DEFAULT_PARSER_CLASSES": ["flespi_site.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "flespi_site.api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "flespi_site.api.schema.FlespiAutoSchema",
    "UNAUTHENTICATED_USER": None,
    "UNAUTHENTICATED_TOKEN": None,
    "DEFAULT_THROTTLE_CLASSES": ["flespi_site.api.throttling.TokenRateThrottle"],
}

# Rate limits per token (docs/api.md, "Rate limits"): requests per second and their burst, and
# separately messages stored per second and their burst; 0 turns a limit off.
RATE_LIMIT_REQUESTS = _env_float("RATE_LIMIT_REQUESTS", 100)
RATE_LIMIT_REQUESTS_BURST = _env_int("RATE_LIMIT_REQUESTS_BURST", 500)
RATE_LIMIT_MESSAGES = _env_float("RATE_LIMIT_MESSAGES", 50_000)
RATE_LIMIT_MESSAGES_BURST = _env_int("RATE_LIMIT_MESSAGES_BURST", 500_000)
for _name in ("RATE_LIMIT_REQUESTS_BURST", "RATE_LIMIT_MESSAGES_BURST"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name} must be at least 1 (a limit is turned off by its rate: "
                                   f"{_name.removesuffix('_BURST')}=0)")
# The first superuser's password for `flespi migrate` (else a generated one, written to a file).
ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "")

SPECTACULAR_SETTINGS = {
    "TITLE": "Telematics platform API",
    "DESCRIPTION": "Devices, messages, calculators and intervals, with flespi-compatible conventions.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Redis (Celery broker and debounce timers) and MQTT, per region; these are the defaults.
REDIS_URL = os.environ.get("REDIS_URL", _topology.DEFAULT_REDIS_URL)
MQTT_URL = os.environ.get("MQTT_URL", _topology.DEFAULT_MQTT_URL)
MQTT_TOPIC_ROOT = os.environ.get("MQTT_TOPIC_ROOT", "flespi")
# The platform's own MQTT clients (relay, ingest consumer) log in with these on the platform's
# broker; with no password they connect as the URL says (an external broker without access
# control, docs/mqtt.md). The embedded services set them for the broker they start.
MQTT_PLATFORM_USERNAME = os.environ.get("MQTT_PLATFORM_USERNAME", "flespi-platform")
MQTT_PLATFORM_PASSWORD = os.environ.get("MQTT_PLATFORM_PASSWORD", "")
# The platform's broker (``flespi broker``, docs/mqtt.md): the address it listens on; how long it
# keeps what it learnt of a device's or account's owner (a change is announced by the device's log
# event, which drops it at once) and that a device or ident does not exist; what it queues per
# client beyond the in-flight window.
MQTT_BIND = os.environ.get("MQTT_BIND", "127.0.0.1")
MQTT_ACCESS_CACHE_SECONDS = _env_float("MQTT_ACCESS_CACHE_SECONDS", 60)
MQTT_ACCESS_ABSENT_SECONDS = _env_float("MQTT_ACCESS_ABSENT_SECONDS", 2)
MQTT_MAX_QUEUED = _env_int("MQTT_MAX_QUEUED", 100_000)
# MQTT over WebSocket of each region: MQTT_WS_URL_<REGION>, else MQTT_WS_URL for every region
# whose MQTT URL is the default one; the broker listens on its port.
MQTT_WS_URLS = {
    region.code: url
    for region in TOPOLOGY.regions
    if (url := os.environ.get(f"MQTT_WS_URL_{region.code.upper()}")
        or (os.environ.get("MQTT_WS_URL") if region.mqtt_url == MQTT_URL else None))
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Seconds since the platform last heard from a device (a message received over REST or MQTT)
# within which the device is ``connected``.
DEVICE_CONNECTION_TIMEOUT = _env_float("DEVICE_CONNECTION_TIMEOUT", 600.0)
# Logical calculation shards per region; a device's shard is fixed at creation.
CALC_SHARDS = _env_int("CALC_SHARDS", 256)
# Devices publish their messages to this pattern on their region's broker; '+' is the ident.
MQTT_INGEST_TOPIC = os.environ.get("MQTT_INGEST_TOPIC", "ingest/+")
# Where calc workers keep their shard caches (one SQLite file per shard, derived data).
CALC_DATA_DIR = os.environ.get("CALC_DATA_DIR") or str(STATE_DIR / "calc")
# Seconds a calc worker's shard lease lasts without renewal: how long a dead worker's shards wait
# before another worker takes them.
CALC_LEASE_TTL = _env_float("CALC_LEASE_TTL", 15)
# Seconds the numbered drains of the change log are kept: a calc worker that comes back to a
# shard within it reads again only the ranges other workers drained meanwhile; after it, its cache
# of the shard is refilled (docs/analytics.md, "Cache validity").
CALC_CATCHUP_WINDOW = _env_float("CALC_CATCHUP_WINDOW", 900)

# A role other than the web serves /health/live, /health/ready and /metrics on this port when it is
# set (``flespi_site.health``).
HEALTH_PORT = _env_int("HEALTH_PORT", 0) or None

# /metrics (docs/configuration.md, "Metrics"): where every process keeps its counters, and who may
# scrape them: a request from one of the allowed networks, or one with the bearer token. A process
# that serves its own metrics (HEALTH_PORT) keeps them in a directory of its own below, so that
# the web's scrape of the directory does not count them a second time.
METRICS_DIR = os.environ.get("METRICS_DIR") or str(STATE_DIR / "metrics")
if HEALTH_PORT is not None:
    METRICS_DIR = str(Path(METRICS_DIR) / f"port-{HEALTH_PORT}")
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")


def _networks(name: str, default: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in _env_list(name, default)]
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}: {error}; set comma-separated networks like {default}") from None


METRICS_ALLOW = _networks("METRICS_ALLOW", "127.0.0.0/8,::1/128")

# Webhooks (docs/webhooks.md): the addresses their requests may reach besides public ones (networks
# like 10.0.0.0/8 and host names like crm.internal or *.internal; private, loopback, link-local
# and multicast addresses are refused unless listed), whether public addresses are allowed at all,
# the sender threads of a delivery process, the pause before the retries of a failed event
# (doubling from the first to the most), and how long the delivery log keeps finished events.
WEBHOOK_ALLOW = _env_list("WEBHOOK_ALLOW")
WEBHOOK_ALLOW_PUBLIC = _env_bool("WEBHOOK_ALLOW_PUBLIC", True)
WEBHOOK_SENDERS = _env_int("WEBHOOK_SENDERS", 32)
WEBHOOK_RETRY_FIRST = _env_float("WEBHOOK_RETRY_FIRST", 1)
WEBHOOK_RETRY_MOST = _env_float("WEBHOOK_RETRY_MOST", 300)
WEBHOOK_LOG_SECONDS = _env_float("WEBHOOK_LOG_SECONDS", 7 * 86400)
