"""djpoolapp.tagging: the application_name each pooled PostgreSQL connection gets."""

from __future__ import annotations

import pytest

from djpoolapp import tagging


@pytest.fixture
def host(monkeypatch):
    def use(name: str) -> None:
        monkeypatch.setattr(tagging.socket, "gethostname", lambda: name)

    return use


def test_application_name__host_pid_alias(host):
    host("web1.example.com")
    assert tagging.application_name("default", pid=4242) == "djpool/web1/4242/default"


def test_application_name__appended_to_the_aliases_own(host):
    host("web1")
    name = tagging.application_name("default", own="shop", pid=7)
    assert name == "shop djpool/web1/7/default"
    assert tagging.parse(name) == {"host": "web1", "pid": 7, "alias": "default"}


def test_application_name__fits_63_bytes_cutting_host_then_own_name(host):
    host("h" * 60)
    name = tagging.application_name("replica", own="x" * 40, pid=123456)
    assert len(name.encode()) <= tagging.MAX_APPLICATION_NAME
    assert name.endswith("/123456/replica")
    assert tagging.parse(name)["alias"] == "replica"
    host("web1")
    long_own = tagging.application_name("default", own="y" * 80, pid=1)
    assert len(long_own.encode()) <= tagging.MAX_APPLICATION_NAME
    assert long_own.endswith(" djpool/web1/1/default")


def test_tag_connect_kwargs__postgres_only_and_never_in_place(host):
    host("web1")
    kwargs = {"dbname": "shop", "application_name": "shop"}
    tagged = tagging.tag_connect_kwargs("default", "postgresql", kwargs)
    assert kwargs == {"dbname": "shop", "application_name": "shop"}
    assert tagged["application_name"].startswith("shop djpool/web1/")
    mysql = {"db": "crm"}
    assert tagging.tag_connect_kwargs("legacy", "mysql", mysql) == {"db": "crm"}


@pytest.mark.parametrize("name", [None, "", "psql", "djpool/web1/x/default"])
def test_parse__untagged_names(name):
    assert tagging.parse(name) is None
