"""URLs: the shop views, the admin, and djpoolapp's pool status page."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("catalog.urls")),
    path("admin/", admin.site.urls),
    # Pool status for staff users (log in through the admin first).
    path("pool/", include("djpoolapp.urls")),
]
