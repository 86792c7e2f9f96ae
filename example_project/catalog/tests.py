"""The example's views across both databases (``manage.py test catalog``)."""

from crm.models import Customer, Note
from django.contrib.auth.models import User
from django.test import TestCase

from .models import Order, Product


class ShopTests(TestCase):
    databases = {"default", "legacy"}

    @classmethod
    def setUpTestData(cls):
        cls.teapot = Product.objects.create(name="Teapot", price="24.00", stock=2)

    def test_router__puts_each_app_on_its_database(self):
        customer = Customer.objects.create(name="Ada")
        self.assertEqual(customer._state.db, "legacy")
        self.assertEqual(self.teapot._state.db, "default")

    def test_place_order__writes_both_databases(self):
        response = self.client.post(
            "/orders/", {"product": self.teapot.pk, "customer": "Ada", "quantity": 2}
        )
        self.assertRedirects(response, "/")
        customer = Customer.objects.get(name="Ada")
        order = Order.objects.get()
        self.assertEqual((order.customer_id, order.quantity), (customer.pk, 2))
        self.assertEqual(Note.objects.get().customer, customer)
        self.teapot.refresh_from_db()
        self.assertEqual(self.teapot.stock, 0)

    def test_place_order__refused_rolls_back_both_databases(self):
        response = self.client.post(
            "/orders/",
            {"product": self.teapot.pk, "customer": "Grace", "quantity": 5},
            follow=True,
        )
        self.assertContains(response, "Only 2 Teapot left.")
        # The customer and note were written on `legacy`, then rolled back.
        self.assertFalse(Customer.objects.exists())
        self.assertFalse(Note.objects.exists())
        self.assertFalse(Order.objects.exists())
        self.teapot.refresh_from_db()
        self.assertEqual(self.teapot.stock, 2)

    def test_home__joins_orders_with_customers_from_the_other_database(self):
        customer = Customer.objects.create(name="Margaret")
        Order.objects.create(product=self.teapot, customer_id=customer.pk, quantity=1)
        response = self.client.get("/")
        self.assertContains(
            response, "<td>Teapot</td><td>1</td><td>Margaret</td>", html=False
        )

    def test_summary__counts_both_databases(self):
        Customer.objects.create(name="Ada")
        data = self.client.get("/api/summary/").json()
        self.assertEqual((data["products"], data["customers"]), (1, 1))
        self.assertEqual(set(data["sessions"]), {"default", "legacy"})


class StaffPagesTests(TestCase):
    databases = {"default", "legacy"}

    def setUp(self):
        self.client.force_login(User.objects.create_superuser("admin"))

    def test_admin__lists_models_of_both_databases(self):
        Customer.objects.create(name="Grace")
        for path in ("/admin/crm/customer/", "/admin/catalog/order/", "/admin/"):
            self.assertEqual(self.client.get(path).status_code, 200, path)
        self.assertContains(self.client.get("/admin/crm/customer/"), "Grace")

    def test_pool_status_page__is_mounted_for_staff(self):
        response = self.client.get("/pool/")
        self.assertContains(response, "Database connection pools")
        self.assertNotContains(response, 'data-alias="direct"')  # opted out
