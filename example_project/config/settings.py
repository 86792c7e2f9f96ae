"""Settings of djpoolapp's example project: two databases, two apps, one pool each.

Databases come from the environment (config/databases.py); the start-up
output says which ones are in use.  Not a production configuration: the
secret key and DEBUG default to development values.
"""

import os
import sys
from pathlib import Path

from .databases import configure, startup_lines

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "djpoolapp-example-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "djpoolapp",  # <- all it takes to pool every PostgreSQL and MySQL alias
    "catalog",  # models on `default` (PostgreSQL)
    "crm",  # models on `legacy` (MySQL/MariaDB, or SQLite without a URL)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

DATABASES, DATABASE_SOURCES = configure()
DATABASE_ROUTERS = ["config.routers.LegacyRouter"]
print("\n".join(startup_lines(DATABASES, DATABASE_SOURCES)), file=sys.stderr)

# djpoolapp: top-level keys are the defaults for every pooled alias;
# "aliases" overrides them per alias, and False opts an alias out.
# Size pools so that workers x (pool_size + max_overflow) stays below the
# server's max_connections (PostgreSQL's default is 100).
DJPOOL_OPTIONS = {
    "pool_size": 5,  # connections each process keeps open per alias
    "max_overflow": 5,  # extra ones under load, closed again when returned
    "timeout": 10.0,  # wait at most 10 s for a free connection, then error
    "recycle": 1800,  # replace connections older than 30 minutes
    "aliases": {
        # The busiest database gets a bigger pool.
        "default": {"pool_size": 10},
        # Opt-out: "direct" reaches the same PostgreSQL database without the
        # pool, for session-level state that must not be reset or handed to
        # another request (advisory locks, LISTEN/NOTIFY, SET ...).  The demo
        # command takes its advisory lock there.
        "direct": False,
    },
}
if DATABASES["legacy"]["ENGINE"] == "django.db.backends.mysql":
    # MySQL/MariaDB closes connections idle beyond wait_timeout (8 h by
    # default, often much less on hosted servers): a small pool, recycled
    # well before that.  (An SQLite `legacy` is left unpooled: SQLite is
    # pooled only when named here, and opening a file costs next to nothing.)
    DJPOOL_OPTIONS["aliases"]["legacy"] = {"pool_size": 3, "recycle": 600}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "admin:login"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # INFO shows pool creation, recycling and invalidation, never passwords.
    "loggers": {
        "djpoolapp": {
            "handlers": ["console"],
            "level": os.environ.get("DJPOOL_LOG_LEVEL", "WARNING"),
        }
    },
}
