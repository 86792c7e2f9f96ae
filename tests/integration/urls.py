from django.urls import path

from . import views

urlpatterns = [
    path("ping/", views.ping),
    path("orm/<str:alias>/", views.orm),
    path("session/<str:alias>/", views.session),
    path("sleep/<str:alias>/", views.sleep),
    path("async/orm/<str:alias>/", views.async_orm),
]
