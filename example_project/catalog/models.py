"""The shop side, on ``default`` (PostgreSQL)."""

from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=100, unique=True)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    stock = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Order(models.Model):
    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, related_name="orders"
    )
    # The customer lives in the other database (crm.Customer on `legacy`):
    # no foreign key across databases, just its id.
    customer_id = models.BigIntegerField(db_index=True)
    quantity = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product} for customer {self.customer_id}"
