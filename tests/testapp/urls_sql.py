from django.urls import path

from . import views_sql

urlpatterns = [
    path("<str:alias>/run/<str:name>/", views_sql.run),
    path("<str:alias>/raw/<str:name>/", views_sql.raw),
    path("<str:alias>/select-db/<str:database>/", views_sql.select_db),
    path("<str:alias>/insert/", views_sql.insert),
    path("<str:alias>/probe/", views_sql.probe),
]
