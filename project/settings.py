"""
Parley settings. Every knob comes from the environment; README.md has the table.

With neither DATABASE_URL nor REDIS_URL set, Parley runs on its embedded default:
SQLite, the in-memory channel layer, and a task worker inside the dev server.
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SMTP_SCHEMES = {"smtp": (25, {}), "smtp+tls": (587, {"use_tls": True}), "smtps": (465, {"use_ssl": True})}


def smtp_mailer(url: str, timeout: float) -> dict:
    """A MAILERS entry for Django's SMTP backend from one URL.

    `smtp://` (plain, port 25), `smtp+tls://` (STARTTLS, 587) or `smtps://`
    (TLS from the start, 465); user and password percent-encoded. Parsed here
    rather than with dj-email-url, which produces the EMAIL_* settings Django
    6.1 refuses next to MAILERS, and has had no release since 2022.
    """
    parts = urlsplit(url)
    if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
        raise ImproperlyConfigured(
            f"EMAIL_URL must look like smtp://user:password@host:port (or smtp+tls://, smtps://), got scheme {parts.scheme!r}."
        )
    default_port, tls = SMTP_SCHEMES[parts.scheme]
    options = {
        "host": parts.hostname,
        "port": parts.port or default_port,
        "username": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "timeout": timeout,
        **tls,
    }
    return {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": options}


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "parley-insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # An app's command overrides those of the apps after it. tasks first: its
    # runserver (daphne's, serving ASGI, plus the embedded worker) and its
    # runworker (the durable one) win over staticfiles' and channels'. daphne is
    # no app here: its AppConfig imports Twisted and its server into every
    # process, each worker included; tasks' runserver imports what it needs.
    "tasks",
    "channels",
    "accounts",
    "chat",
    "reports",
    "notifications",
    "django.contrib.admin",
    "axes",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    # First: /healthz and /readyz answer probes before the host check, the HTTPS
    # redirect and the login requirement (see project/health.py).
    "project.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Everything needs a login unless a view says otherwise (@login_not_required).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    # Under DEBUG (make run) too, a 404 is Parley's page, not Django's list of URL patterns.
    "project.not_found.NotFoundPageMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            # `{{ when|ago }}` in every template: "just now", "5 minutes ago".
            "builtins": ["project.relative_time"],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
            # Off by default, as in Django: on, every consumer database call pays a
            # SELECT 1 first (channels closes old connections around each call).
            conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS", False),
        )
    }
    if env_bool("DB_PREPARED_STATEMENTS", True):
        # Server-side parameters, and psycopg prepares a statement once it has run
        # 5 times: PostgreSQL then skips parsing and planning it. Django has both
        # off (for transaction-mode poolers); on, a worker's per-task statements
        # cost PostgreSQL ~0.7 ms less CPU per avatar (bench/thumbnails.py).
        DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
else:
    SQLITE_PATH = os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            # Tests use a file too (not Django's shared-cache in-memory database,
            # whose table locks ignore the busy timeout): the worker's threads
            # each have a connection, as they do in `make run`.
            "TEST": {"NAME": SQLITE_PATH + ".test"},
            "OPTIONS": {
                # The embedded worker writes from its own thread while requests are
                # served: WAL lets readers through, IMMEDIATE takes the write lock up
                # front so two writers queue instead of failing with "locked".
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layers ---------------------------------------------------------
# Two layers, measured apart (bench/fanout.py, bench/tasks.py):
# - "default" carries what browsers see: room broadcasts, presence, progress.
#   channels-redis' pub/sub layer publishes a room's message once per daphne,
#   not once per socket, and each daphne fans it out in memory; anything lost
#   in flight (a Redis restart) is filled in from the database by the room
#   socket (see chat.consumers). CHANNEL_LAYER=core picks the list-based layer.
# - "tasks" rings the task queues' bells: the core layer, whose channels hand
#   each bell to one idle worker and keep it while every worker is busy.
REDIS_URL = os.environ.get("REDIS_URL", "")
CHANNEL_LAYER = os.environ.get("CHANNEL_LAYER", "pubsub")
if CHANNEL_LAYER not in ("pubsub", "core"):
    raise ImproperlyConfigured("CHANNEL_LAYER must be 'pubsub' or 'core'.")
if REDIS_URL:
    CORE_LAYER = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            # Task bells pile up while workers are busy; a full channel only
            # drops a bell (the database holds the task), never a task.
            "capacity": int(os.environ.get("CHANNEL_CAPACITY", "1000")),
            "expiry": 60,
        },
    }
    CHANNEL_LAYERS = {
        "default": CORE_LAYER
        if CHANNEL_LAYER == "core"
        else {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}},
        "tasks": CORE_LAYER,
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
        "tasks": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }

# --- Tasks --------------------------------------------------------------------
# Queue names are channel names: `runworker thumbnails notifications compute default`.
TASK_QUEUES = ["default", "thumbnails", "notifications", "compute"]
TASKS = {
    "default": {
        "BACKEND": "tasks.backends.ChannelsBackend",
        "QUEUES": TASK_QUEUES,
        "OPTIONS": {
            "CHANNEL_LAYER": "tasks",
            # Slots: tasks of a queue one worker process runs at once (its sync tasks
            # on that many threads, each with a database connection of its own); a
            # queue not named gets 1. Chosen by measurement: see README, "Slots".
            "CONCURRENCY": {"default": 4, "thumbnails": 2, "notifications": 16, "compute": 1},
            # Async tasks are coroutines on the worker's event loop: cheap, so many.
            "ASYNC_CONCURRENCY": int(os.environ.get("TASKS_ASYNC_CONCURRENCY", "64")),
            # Time limit of each attempt of a task that sets none with @task(timeout=...):
            # `600` (every queue) or `compute=3600,notifications=120`; empty: none. README, "Time limits".
            "TIMEOUT": os.environ.get("TASKS_TIMEOUT", ""),
        },
    }
}
# Overrides CONCURRENCY: `8` (every queue) or `notifications=16,compute=1`, as `runworker --concurrency`.
TASKS_CONCURRENCY = os.environ.get("TASKS_CONCURRENCY", "")
# Run a worker inside `manage.py runserver`: the in-memory layer cannot reach
# another process, so without Redis this is the only way tasks get run.
TASKS_EMBEDDED_WORKER = env_bool("TASKS_EMBEDDED_WORKER", not REDIS_URL)
# Idle workers look at the database this often even without a bell (lost bells cost this much latency).
TASKS_POLL_INTERVAL = float(os.environ.get("TASKS_POLL_INTERVAL", "1"))
# Workers renew the lease on their running tasks every TASKS_HEARTBEAT_INTERVAL seconds;
# a task whose lease is TASKS_LEASE seconds old is given to another worker (its worker died).
TASKS_HEARTBEAT_INTERVAL = float(os.environ.get("TASKS_HEARTBEAT_INTERVAL", "2"))
TASKS_LEASE = float(os.environ.get("TASKS_LEASE", "10"))
if TASKS_LEASE < 2 * TASKS_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured("TASKS_LEASE must be at least twice TASKS_HEARTBEAT_INTERVAL.")
# Each worker touches this file on every heartbeat (empty: none); `manage.py tasks alive`
# reads its age, for a container's liveness probe.
TASKS_ALIVE_FILE = os.environ.get("TASKS_ALIVE_FILE", "")
# A task whose worker died this many times (an OOM it causes, say) is FAILED, not run again.
TASKS_MAX_WORKER_LOSSES = int(os.environ.get("TASKS_MAX_WORKER_LOSSES", "3"))
# The nightly schedule tasks.tasks.prune_finished deletes tasks finished longer ago than this.
TASKS_KEEP_FINISHED_DAYS = int(os.environ.get("TASKS_KEEP_FINISHED_DAYS", "7"))

# --- Metrics (Prometheus) ------------------------------------------------------------
# Scrapers send this as a bearer token. Unset, nothing is counted and /metrics is a 404:
# the counters cost the hot paths nothing when nobody reads them.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# runworker serves its own metrics on this port (each process counts its own), bound to
# METRICS_ADDR; unset, it serves none (`runworker --metrics-port` overrides it).
METRICS_PORT = int(os.environ.get("METRICS_PORT", "0"))
METRICS_ADDR = os.environ.get("METRICS_ADDR", "127.0.0.1")
# Prometheus scrapes each daphne's own port over the private network, not through the
# TLS proxy: /metrics is not redirected to https (the bearer token guards it).
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]

# --- Chat -----------------------------------------------------------------------
# Frames over 64 KiB are refused by daphne itself (runserver reads this; the
# Procfile passes the same value to daphne on the command line).
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = 65536
# A daphne whose liveness row was not refreshed for this many seconds is dead,
# and its sockets' presence expires; each daphne refreshes its row every third of it.
CHAT_PRESENCE_TTL = float(os.environ.get("CHAT_PRESENCE_TTL", "60"))
if CHAT_PRESENCE_TTL <= 0:
    raise ImproperlyConfigured("CHAT_PRESENCE_TTL must be a positive number of seconds.")
# Room sockets one user may hold open at once, all rooms and daphnes together
# (counted in the presence rows): one more is closed with 4409.
CHAT_MAX_SOCKETS_PER_USER = int(os.environ.get("CHAT_MAX_SOCKETS_PER_USER", "20"))
# Output a WebSocket may have waiting for its client to read before daphne
# (project/webserver.py) closes it with 4408, instead of buffering it all.
CHAT_MAX_UNSENT_BYTES = int(os.environ.get("CHAT_MAX_UNSENT_BYTES", str(4 * 1024 * 1024)))

# A user may create CHAT_ROOM_CREATE_LIMIT rooms (by "New room" or by visiting a
# free label) per CHAT_ROOM_CREATE_WINDOW seconds; the next is refused with a 429 page.
CHAT_ROOM_CREATE_LIMIT = int(os.environ.get("CHAT_ROOM_CREATE_LIMIT", "20"))
CHAT_ROOM_CREATE_WINDOW = float(os.environ.get("CHAT_ROOM_CREATE_WINDOW", "3600"))
# Seconds after posting during which a message may still be edited; unset: no limit (chat.edits).
CHAT_EDIT_WINDOW = float(os.environ["CHAT_EDIT_WINDOW"]) if os.environ.get("CHAT_EDIT_WINDOW") else None
# A user may run SEARCH_RATE_LIMIT searches per SEARCH_RATE_WINDOW seconds (chat.search),
# counted in the "search" cache: Redis when there is one, so every web process shares the count.
SEARCH_RATE_LIMIT = int(os.environ.get("SEARCH_RATE_LIMIT", "30"))
SEARCH_RATE_WINDOW = float(os.environ.get("SEARCH_RATE_WINDOW", "60"))
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "search": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "search"},
}

# --- Reports (room exports and insights, on the compute queue) -------------------
# A user's queued or running exports and insights at once; one more is refused.
REPORTS_MAX_RUNNING_PER_USER = int(os.environ.get("REPORTS_MAX_RUNNING_PER_USER", "3"))
# Export files (and insights charts) are offered this long, then removed.
REPORTS_EXPORT_TTL = timedelta(days=float(os.environ.get("REPORTS_EXPORT_TTL_DAYS", "7")))
# An export is written in parts of about this size, each a checkpoint a restarted
# job resumes after; also the most an export holds in memory at once.
REPORTS_EXPORT_PART_BYTES = int(os.environ.get("REPORTS_EXPORT_PART_BYTES", str(4 * 1024 * 1024)))

# --- Notifications (@mentions by email or SMS, on the notifications queue) --------
# Links in emails and SMS start with this: Parley's public address. Production sets it
# (`check --deploy` warns otherwise); `make run` sets it to the address it serves.
# Unset, links point at runserver's default address.
PARLEY_BASE_URL = os.environ.get("PARLEY_BASE_URL", "")
# Email: any django-anymail backend, e.g. EMAIL_BACKEND=anymail.backends.postmark.EmailBackend
# with ANYMAIL_POSTMARK_SERVER_TOKEN=...; every ANYMAIL_<NAME> variable becomes ANYMAIL["<NAME>"].
# By default the console backend (mail printed to the terminal) when DEBUG is on, SMTP when off.
# EMAIL_URL (smtp://user:password@host:port) configures Django's SMTP backend instead.
_DEFAULT_EMAIL_BACKEND = "django.core.mail.backends." + ("console" if DEBUG else "smtp") + ".EmailBackend"
EMAIL_URL = os.environ.get("EMAIL_URL", "")
if EMAIL_URL:
    if os.environ.get("EMAIL_BACKEND"):
        raise ImproperlyConfigured("Set EMAIL_URL or EMAIL_BACKEND, not both: EMAIL_URL is for SMTP.")
    MAILERS = {"default": smtp_mailer(EMAIL_URL, float(os.environ.get("EMAIL_TIMEOUT", "10")))}
else:
    MAILERS = {"default": {"BACKEND": os.environ.get("EMAIL_BACKEND", _DEFAULT_EMAIL_BACKEND)}}
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Parley <parley@localhost>")
ANYMAIL = {name.removeprefix("ANYMAIL_"): value for name, value in os.environ.items() if name.startswith("ANYMAIL_")}
ANYMAIL.setdefault("REQUESTS_TIMEOUT", float(os.environ.get("EMAIL_TIMEOUT", "10")))
# SMS through Twilio. TWILIO_API_URL replaces https://api.twilio.com (tests, proxies).
TWILIO_ACCOUNT_SID = os.environ.get("TWILIO_ACCOUNT_SID", "")
TWILIO_AUTH_TOKEN = os.environ.get("TWILIO_AUTH_TOKEN", "")
TWILIO_FROM_NUMBER = os.environ.get("TWILIO_FROM_NUMBER", "")
TWILIO_API_URL = os.environ.get("TWILIO_API_URL", "")
TWILIO_TIMEOUT = float(os.environ.get("TWILIO_TIMEOUT", "10"))
# Ask Twilio to report delivery (and failures) to PARLEY_BASE_URL/notifications/twilio/.
TWILIO_STATUS_CALLBACK = env_bool("TWILIO_STATUS_CALLBACK", not DEBUG)
# Phone numbers typed without a country code are read as this region's.
PHONE_DEFAULT_REGION = os.environ.get("PHONE_DEFAULT_REGION", "US")

# --- Auth -----------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Failed logins are counted per handle and per address (django-axes): after
# LOGIN_FAILURE_LIMIT of either within LOGIN_LOCKOUT_MINUTES, that handle or
# address may not log in for LOGIN_LOCKOUT_MINUTES. The cool-off runs from the
# failure that reached the limit; attempts during it do not extend it, so
# whoever hammers a handle cannot keep its owner out for ever. A success clears
# nothing: axes would clear the address's count too, and a guesser with an
# account of their own could then guess on without end. Successful logins are
# not logged (axes' access log): Parley needs only the failures.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_USERNAME_CALLABLE = "accounts.models.login_throttle_key"  # any spelling of a handle is one account
AXES_RESET_ON_SUCCESS = False
AXES_DISABLE_ACCESS_LOG = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"

# --- I18N -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media ---------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
# Uploaded media (avatars) go to an S3-compatible bucket when one is named, else to
# MEDIA_ROOT. Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by boto3.
AWS_STORAGE_BUCKET_NAME = os.environ.get("AWS_STORAGE_BUCKET_NAME", "")
if AWS_STORAGE_BUCKET_NAME:
    STORAGES["default"] = {"BACKEND": "storages.backends.s3.S3Storage"}
    AWS_S3_ENDPOINT_URL = os.environ.get("AWS_S3_ENDPOINT_URL") or None  # MinIO, R2, ...; None: AWS
    AWS_S3_REGION_NAME = os.environ.get("AWS_S3_REGION_NAME") or None
    AWS_S3_CUSTOM_DOMAIN = os.environ.get("AWS_S3_CUSTOM_DOMAIN") or None  # a CDN in front of the bucket
    AWS_S3_ADDRESSING_STYLE = os.environ.get("AWS_S3_ADDRESSING_STYLE") or None  # "path" for MinIO and most others
    # Thumbnail URLs are plain and permanent (content-hashed names), not signed and expiring:
    # the bucket policy makes avatars/ public and keeps avatar-originals/ private.
    AWS_QUERYSTRING_AUTH = False
    AWS_DEFAULT_ACL = None
    AWS_S3_OBJECT_PARAMETERS = {"CacheControl": "public, max-age=31536000, immutable"}

# --- Content-Security-Policy (every page; Django's own middleware) -------------
# Parley's pages have no inline script, style or handler: scripts, styles and
# sockets come from Parley itself, and images from it, the avatar preview
# (blob:) and the media bucket. ('self' covers ws:/wss: to the same host.)
_MEDIA_ORIGINS = []
if AWS_STORAGE_BUCKET_NAME:
    if AWS_S3_CUSTOM_DOMAIN:
        _MEDIA_ORIGINS.append(f"https://{AWS_S3_CUSTOM_DOMAIN}")
    elif AWS_S3_ENDPOINT_URL:
        _MEDIA_ORIGINS.append(AWS_S3_ENDPOINT_URL.rstrip("/"))
    else:
        _MEDIA_ORIGINS.append("https://*.amazonaws.com")
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:", "blob:", *_MEDIA_ORIGINS],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# --- Security (production) -------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- Logging: one line per event, key=value, easy to grep ---------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
# LOG_FORMAT=json: one JSON object a line (python-json-logger) for log collectors that index
# fields; the message keeps its key=value text, so a grep finds the same events either way.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "kv")
if LOG_FORMAT not in ("kv", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'kv' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "kv": {"format": "ts=%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger", "process": "pid"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "project": {"level": LOG_LEVEL},
        "accounts": {"level": LOG_LEVEL},
        "chat": {"level": LOG_LEVEL},
        "notifications": {"level": LOG_LEVEL},
        "reports": {"level": LOG_LEVEL},
        "tasks": {"level": LOG_LEVEL},
        "django.channels.worker": {"level": LOG_LEVEL},
        "django.tasks": {"level": os.environ.get("TASKS_LOG_LEVEL", "WARNING")},
    },
}

# --- Error reporting: Sentry, off unless SENTRY_DSN is set ---------------------------
# Unhandled errors in views (Django integration) and ERROR log lines are sent;
# the asyncio integration, which needs a running loop, is switched on by the
# processes that run one (project.asgi, tasks.worker). No user data is sent.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        integrations=[DjangoIntegration()],
        environment=os.environ.get("SENTRY_ENVIRONMENT", "development" if DEBUG else "production"),
        traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE", "0")),
        send_default_pii=False,
    )
