from django.apps import AppConfig


class CrmConfig(AppConfig):
    """Customer records, on the ``legacy`` (MySQL/MariaDB) database."""

    name = "crm"
    verbose_name = "CRM (legacy database)"
    default_auto_field = "django.db.models.BigAutoField"
