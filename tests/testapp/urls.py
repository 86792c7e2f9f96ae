from django.urls import include, path

from . import views

urlpatterns = [
    path("session/<str:alias>/", views.backend_id),
    path("create/<str:alias>/", views.create_item),
    path("leave-open/<str:alias>/", views.leave_transaction_open),
    path("fail/<str:alias>/", views.fail_in_transaction),
    path("crash-after-update/<str:alias>/", views.crash_after_update),
    path("lock-rows/<str:alias>/", views.lock_rows),
]

# tests/test_mysql_session.py (MySQL session state through the request cycle)
urlpatterns += [path("sql/", include("tests.testapp.urls_sql"))]
