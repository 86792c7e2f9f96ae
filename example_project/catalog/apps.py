from django.apps import AppConfig


class CatalogConfig(AppConfig):
    """Products and orders, on the ``default`` (PostgreSQL) database."""

    name = "catalog"
    default_auto_field = "django.db.models.BigAutoField"
