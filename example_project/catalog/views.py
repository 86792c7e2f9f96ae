"""Views that read and write through the ORM on both databases.

Each request uses ``default`` (catalog) and ``legacy`` (crm); with djpoolapp
both connections come from their pools and go back at request end.
"""

from __future__ import annotations

from typing import Any

from crm.models import Customer, Note
from django.contrib import messages
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from .models import Order, Product

SESSION_ID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


class OrderRefused(Exception):
    """Raised inside the atomic blocks to roll both databases back."""


def server_session(alias: str) -> Any:
    """The id of the server session serving *alias* (None for SQLite)."""
    connection = connections[alias]
    sql = SESSION_ID_SQL.get(connection.vendor)
    if sql is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def home(request: HttpRequest) -> HttpResponse:
    """Products (default), customers (legacy) and recent orders joined in Python."""
    orders = list(Order.objects.select_related("product")[:10])
    names = dict(
        Customer.objects.filter(id__in={o.customer_id for o in orders}).values_list(
            "id", "name"
        )
    )
    context = {
        "products": Product.objects.all(),
        "customers": Customer.objects.prefetch_related("notes"),
        "orders": [(order, names.get(order.customer_id, "?")) for order in orders],
    }
    return render(request, "catalog/home.html", context)


@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    """Take stock on ``default`` and record the customer on ``legacy``.

    One ``transaction.atomic`` per database, nested: an error in either
    rolls both back.  This is not a two-phase commit: if the outer
    (``default``) commit itself failed after ``legacy`` committed, the
    customer and note would stay -- harmless here, and the usual trade-off
    of a project with two databases.
    """
    name = request.POST.get("customer", "").strip()
    try:
        quantity = int(request.POST.get("quantity", "1"))
        product_id = int(request.POST.get("product", ""))
    except ValueError:
        messages.error(request, "Choose a product and a whole quantity.")
        return redirect("catalog:home")
    try:
        with transaction.atomic(using="default"), transaction.atomic(using="legacy"):
            product = Product.objects.select_for_update().filter(pk=product_id).first()
            if product is None or not name or quantity < 1:
                raise OrderRefused("Choose a product, a customer name and a quantity.")
            customer, _ = Customer.objects.get_or_create(name=name)
            Note.objects.create(
                customer=customer, text=f"ordered {quantity} x {product}"
            )
            if product.stock < quantity:
                raise OrderRefused(f"Only {product.stock} {product} left.")
            product.stock -= quantity
            product.save(update_fields=["stock"])
            order = Order.objects.create(
                product=product, customer_id=customer.pk, quantity=quantity
            )
    except OrderRefused as refusal:
        messages.error(request, str(refusal))
    else:
        messages.success(request, f"Order {order.pk} placed: {order}.")
    return redirect("catalog:home")


def summary(request: HttpRequest) -> JsonResponse:
    """Counts from both databases and the server sessions that served them.

    The ``demo`` command requests this page many times: with djpoolapp the
    same session ids come back, without it each request opens new ones.
    """
    return JsonResponse(
        {
            "products": Product.objects.count(),
            "customers": Customer.objects.count(),
            "sessions": {
                alias: server_session(alias) for alias in ("default", "legacy")
            },
        }
    )
