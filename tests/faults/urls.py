"""The test app's URLs plus the misbehaving views of the fault suite."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("", include("tests.testapp.urls")),
    path("faults/killed/<str:alias>/", views.killed_mid_request),
    path("faults/atomic-raise/<str:alias>/", views.raise_in_atomic),
    path("faults/open-cursor/<str:alias>/", views.leave_cursor_open),
    path("faults/abandon-iterator/<str:alias>/", views.abandon_iterator),
    path("faults/marker/<str:alias>/", views.marker),
    path("faults/whoami/<str:alias>/", views.whoami),
]
