from django.urls import path

from . import views

urlpatterns = [
    path("session/<str:alias>/", views.backend_id),
    path("create/<str:alias>/", views.create_item),
    path("leave-open/<str:alias>/", views.leave_transaction_open),
    path("fail/<str:alias>/", views.fail_in_transaction),
]
