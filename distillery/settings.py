"""Distillery settings. Everything a deployment changes comes from the environment.

DISTILLERY_ENV=production turns on the production profile (DEBUG off, secure cookies, HSTS,
required secrets). Without DATABASE_URL / REDIS_URL the app runs on SQLite with a filesystem
Celery broker, so `make run` needs nothing installed.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from distillery.env import env_bool, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

ENVIRONMENT = env_str("DISTILLERY_ENV", "development")
if ENVIRONMENT not in {"development", "production", "test"}:
    raise ImproperlyConfigured("DISTILLERY_ENV must be development, production or test")
PRODUCTION = ENVIRONMENT == "production"

DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION:
    SECRET_KEY = env_str("SECRET_KEY")
    if len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters in production")
else:
    SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-" + "x" * 40)

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# One directory for uploads, checkpoints, adapters, merged models and exports, shared by web and
# workers. Rows store paths relative to it.
DATA_DIR = env_path("DISTILLERY_DATA_DIR", BASE_DIR / ".data")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "ninja",  # the REST API's schema and docs page (static files of its docs)
    # One app per stage of the journey, in the order data flows (imports only go down this list).
    "teams",
    "jobs",
    "projects",
    "teachers",
    "review",
    "dataset_versions",
    "finetunes",
    "evaluations",
    "serving",
    "gateway",
    "reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "distillery.security.ContentSecurityPolicyMiddleware",
    "distillery.outages.OutageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "teams.api_middleware.ApiRateLimitMiddleware",
    "teams.api_middleware.ApiIdempotencyMiddleware",
]

ROOT_URLCONF = "distillery.urls"
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
                "teams.context_processors.teams",
                "distillery.security.csp_nonce",
            ],
        },
    }
]
WSGI_APPLICATION = "distillery.wsgi.application"

_database_url = env_str("DATABASE_URL", "")
if _database_url:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "distillery.sqlite3"),
            # Web and worker share the file; wait instead of failing on a brief lock.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "distillery"),
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "reports:dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", BASE_DIR / "staticfiles")
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# Uploads: stream to disk, never hold a big file in memory.
MAX_UPLOAD_BYTES = env_int("DISTILLERY_MAX_UPLOAD_MB", 200) * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None
# The size limit is enforced while the body arrives (distillery.uploads), before anything is kept.
FILE_UPLOAD_HANDLERS = [
    "distillery.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# Provider keys are encrypted with a dedicated key list, not SECRET_KEY, so rotating one does not
# touch the other. The first key encrypts; all keys decrypt (MultiFernet).
_fernet_keys = env_list("DISTILLERY_FERNET_KEYS", [])
if not _fernet_keys:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "DISTILLERY_FERNET_KEYS is required in production "
            "(generate one: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        )
    from cryptography.fernet import Fernet

    _key_file = DATA_DIR / "fernet.key"
    _key_file.parent.mkdir(parents=True, exist_ok=True)
    if not _key_file.exists():
        _key_file.write_text(Fernet.generate_key().decode())
        _key_file.chmod(0o600)
    _fernet_keys = [_key_file.read_text().strip()]
FERNET_KEYS = _fernet_keys

# Jobs
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if not REDIS_URL:
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A stopping worker gives running tasks this long, then hands them back to the queue (acks
# late; teacher runs resume from their ledger) instead of waiting for them without end.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_int("DISTILLERY_WORKER_SHUTDOWN_S", 10)
# Every worker also runs the reaper on a timer of its main process (jobs.tasks.Reaper).
REAPER_EVERY_S = env_int("DISTILLERY_REAPER_EVERY_S", 60)
CELERY_BEAT_SCHEDULE = {
    "reap-stale-jobs": {
        "task": "jobs.reap_stale_jobs",
        "schedule": REAPER_EVERY_S,
        "options": {"queue": "default"},
    }
}
JOB_HEARTBEAT_STALE_AFTER_S = env_int("DISTILLERY_JOB_STALE_AFTER_S", 300)
JOB_MAX_ATTEMPTS = env_int("DISTILLERY_JOB_MAX_ATTEMPTS", 3)
# A running job's own process beats this often, whatever its work is doing.
JOB_HEARTBEAT_EVERY_S = env_int("DISTILLERY_JOB_HEARTBEAT_EVERY_S", 30)
# Where a machine's compute locks live (one heavy job per GPU or per CPU machine); machine-local.
COMPUTE_LOCK_DIR = env_str("DISTILLERY_COMPUTE_LOCK_DIR", "")
# Rows an import commits between progress reports.
IMPORT_BATCH_SIZE = env_int("DISTILLERY_IMPORT_BATCH_SIZE", 2000)
# CPU threads of a fine-tuning subprocess; 0: every core the worker may use.
TRAINING_THREADS = env_int("DISTILLERY_TRAINING_THREADS", 0)
# Folders a local (transformers) teacher model may be loaded from; the data dir when unset.
TEACHER_LOCAL_MODEL_ROOTS = env_list("DISTILLERY_TEACHER_MODEL_ROOTS", [])
# Seconds between polls of a provider batch (OpenAI Batch API, Anthropic Message Batches).
TEACHER_BATCH_POLL_S = env_int("DISTILLERY_TEACHER_BATCH_POLL_S", 30)
# Export bundles: a GGUF quant whose task metric on the test split falls more than this many
# points below the unquantised student's is marked "do not use"; the check answers at most
# EXPORT_QUANT_CHECK_MAX_EXAMPLES test rows (a seeded sample past that); the quants made.
EXPORT_QUANT_MARGIN_POINTS = float(env_str("DISTILLERY_EXPORT_QUANT_MARGIN_POINTS", "2"))
EXPORT_QUANT_CHECK_MAX_EXAMPLES = env_int("DISTILLERY_EXPORT_QUANT_CHECK_MAX_EXAMPLES", 200)
EXPORT_QUANT_TYPES = env_list("DISTILLERY_EXPORT_QUANT_TYPES", ["Q8_0", "Q4_K_M"])

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # Trusting X-Forwarded-Proto is only safe behind a proxy that sets it and strips what a
    # client sent; so it is the operator's explicit choice.
    if env_bool("DISTILLERY_TRUST_X_FORWARDED_PROTO", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# REST API (/api/v1/): requests per token per minute (0: no limit).
API_RATE_LIMIT_PER_MINUTE = env_int("DISTILLERY_API_RATE_PER_MINUTE", 1200)
# How long a process may reuse who a token is (a change to tokens, members or users is seen at
# once anyway through a generation number in the shared cache; this is the backstop).
API_AUTH_CACHE_S = env_int("DISTILLERY_API_AUTH_CACHE_S", 30)
# Inputs one API call may create (one all-or-nothing write).
API_MAX_BATCH_ROWS = env_int("DISTILLERY_API_MAX_BATCH_ROWS", 10_000)

# The task gateway (gateway app). The served student is reached over HTTP at the serving
# process's OpenAI-compatible endpoint, so the gateway answers whether or not it runs.
GATEWAY_STUDENT_URL = env_str("DISTILLERY_SERVE_URL", "http://127.0.0.1:8001/v1")
# Records waiting to be written behind the answers; beyond this they are dropped and counted.
GATEWAY_QUEUE_SIZE = env_int("DISTILLERY_GATEWAY_QUEUE_SIZE", 10_000)
# How long a policy read is reused: a change on the page takes effect within this many seconds.
GATEWAY_POLICY_CACHE_S = env_int("DISTILLERY_GATEWAY_POLICY_CACHE_S", 2)
