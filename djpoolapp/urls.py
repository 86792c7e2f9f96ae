"""URLs of the pool status page; mount them where your staff look::

    urlpatterns = [
        ...,
        path("pool/", include("djpoolapp.urls")),
    ]

``djpoolapp:status`` is the HTML page, ``djpoolapp:status-json`` the JSON it
polls (also handy for a monitoring probe that logs in as a staff user).
"""

from django.urls import path

from . import views

app_name = "djpoolapp"

urlpatterns = [
    path("", views.status_page, name="status"),
    path("status.json", views.status_json, name="status-json"),
]
