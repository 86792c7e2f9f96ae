"""Admin for the legacy records: the router sends every query to ``legacy``."""

from django.contrib import admin

from .models import Customer, Note


class NoteInline(admin.TabularInline):
    model = Note
    extra = 0


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "email", "created"]
    search_fields = ["name", "email"]
    inlines = [NoteInline]
