"""URLconf of the status page tests: djpoolapp.urls mounted as a project would."""

from django.urls import include, path

urlpatterns = [path("pool/", include("djpoolapp.urls"))]
