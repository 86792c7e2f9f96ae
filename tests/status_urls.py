"""URLconf of the status page tests: djpoolapp.urls mounted as a project would,
with a login page at Django's default ``LOGIN_URL`` (``/accounts/login/``)."""

from django.contrib.auth.views import LoginView
from django.urls import include, path

urlpatterns = [
    path("pool/", include("djpoolapp.urls")),
    path("accounts/login/", LoginView.as_view(), name="login"),
]
