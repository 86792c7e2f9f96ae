"""A small app's own test suite, run by Django's test runner in test_runner.py
(also with --parallel 2) with djpoolapp installed."""

from django.db import connections
from django.test import TestCase, TransactionTestCase

from djpoolapp.drivers import PooledConnection
from tests.testapp.models import Item

DATABASES = {alias for alias in ("default", "mysql") if alias in connections.settings}


class PooledTestCase(TestCase):
    databases = DATABASES

    def test_rows_are_rolled_back_between_tests(self):
        for alias in self.databases:
            Item.objects.using(alias).create(name="one")
            self.assertEqual(Item.objects.using(alias).count(), 1)
            self.assertIsInstance(connections[alias].connection, PooledConnection)
            self.assertTrue(
                connections[alias].settings_dict["NAME"].startswith("test_")
            )

    def test_again_starts_empty(self):
        for alias in self.databases:
            self.assertEqual(Item.objects.using(alias).count(), 0)


class PooledTransactionTestCase(TransactionTestCase):
    databases = DATABASES

    def test_commits_then_flush(self):
        for alias in self.databases:
            Item.objects.using(alias).create(name="committed")
            connections[alias].close()  # back to the pool
            self.assertEqual(Item.objects.using(alias).count(), 1)
