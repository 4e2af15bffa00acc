"""The "site disabled" page of a suspended account names the customer's brand (issue 17
item 1): the adapter hands the role the brand's name, web site and support address, and
the role's module points a suspended account's vhost at its brand's page; an account
without a brand keeps the node's page. No node, no Ansible run."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.adapters.hosting.accounts import AccountSpec, BrandPage
from provisioner.domain.catalog import DEFAULT_CATALOG
from provisioner.domain.policy import FCB, ISERVER
from provisioner.errors import InvalidInput
from provisioner.pipeline.capabilities.placement import brand_page
from tests.unit.adapters.node_code import HELPER, MODULE, load_node
from tests.unit.adapters.test_hosting_module import PARAMS, account


@pytest.fixture(scope="module")
def module() -> Any:
    return load_node("hosting_account_module", MODULE)


@pytest.fixture(scope="module")
def helper() -> Any:
    return load_node("hosting_account_helper", HELPER)


def test_the_role_gets_the_brands_page_variables() -> None:
    spec = AccountSpec("examplesi", ("example.si",), DEFAULT_CATALOG.hosting_plan("mega"),
                       page=brand_page(ISERVER))
    ev = spec.validated().extravars("suspend", None, "https://www.installation.example/")
    assert ev["hosting_account_brand"] == "iserver"
    assert ev["hosting_account_provider_name"] == "iSERVER"
    assert ev["hosting_account_provider_url"] == ISERVER.website_url
    assert ev["hosting_account_support_email"] == ISERVER.support_email
    plain = AccountSpec("examplesi", ("example.si",), DEFAULT_CATALOG.hosting_plan("mega"))
    ev = plain.extravars("suspend", None, "https://www.installation.example/")
    assert ev["hosting_account_provider_url"] == "https://www.installation.example/"
    assert "hosting_account_brand" not in ev


@pytest.mark.parametrize("bad", [
    {"code": "../x"}, {"code": "ISERVER"}, {"name": "<script>"}, {"name": ""},
    {"url": "javascript:alert(1)"}, {"url": "https://x.si/\" onload=\""}, {"support_email": "a b@x"},
])
def test_a_page_that_would_inject_is_refused(bad: dict[str, str]) -> None:
    good = {"code": "fcb", "name": "FCB", "url": FCB.website_url, "support_email": FCB.support_email}
    with pytest.raises(InvalidInput):
        BrandPage(**{**good, **bad})


def test_a_suspended_account_shows_its_brands_page(module: Any, helper: Any) -> None:
    a = module.normalize(account(brand="iserver"), PARAMS, helper)
    suspended = module.render_vhost(a, True)
    assert "root /var/www/hosting-suspended;" in suspended
    assert "error_page 503 /iserver.html;" in suspended
    assert "location = /iserver.html { internal; }" in suspended
    assert "snippets/hosting-account-suspended.conf" not in suspended
    assert "/srv/hosting" not in suspended  # nothing of the account is served
    active = module.render_vhost(a, False)
    assert "iserver.html" not in active and "root /srv/hosting/examplesi/public_html;" in active
    node_page = module.render_vhost(module.normalize(account(), PARAMS, helper), True)
    assert "include snippets/hosting-account-suspended.conf;" in node_page


@pytest.mark.parametrize("bad", ["../etc", "a;b", "Upper", "x" * 17, "1x"])
def test_a_bad_brand_is_refused_by_the_module(module: Any, helper: Any, bad: str) -> None:
    with pytest.raises(module.Refused, match="bad brand"):
        module.normalize(account(brand=bad), PARAMS, helper)
