"""The web console in headless Chromium against a served model with access on: sign in (a
wrong key is refused), the catalog, accepting an agreement, drawing a digit and seeing the
prediction and its attribution heatmap, usage growing after a playground call, revoking keys
(the next call is refused); and the tenant routes behind it: one tenant never sees or
touches another's keys or numbers. Screenshots of each page go to bench/out/console."""

import re
import time
from collections import Counter

import pytest
import requests

from maas.access import AccessStore
from maas.config import DeployConfig
from maas.routes import SERVER_APP, model_app_name
from serve_apps.deploy import deploy_model, wait_for_version
from tests.browser import screenshot_dir, start_browser
from tests.conftest import delete_apps, register_versions, until

pytestmark = pytest.mark.integration
NAME = "digits-console"
TERMS = {"license": "CC-BY-4.0", "allowed_uses": ["testing"], "prohibited_uses": ["medical"]}


@pytest.fixture(scope="module")
def site(deploy_cfg, tmp_path_factory):
    """The model behind the gate (an agreement, a price), and the server app with the
    console; tenant acme (two keys, nothing accepted yet) and tenant beta (accepted, used)."""
    data = deploy_cfg.model_dump(mode="json")
    data.update(state_dir=str(tmp_path_factory.mktemp("console-state")),
                access={"enabled": True, "refresh_s": 0.5, "usage_flush_s": 0.5},
                models=[{"name": NAME, "agreement": TERMS,
                         "catalog": {"description": "handwritten digits, 8x8",
                                     "price_per_1k_rows": 2.0, "tags": ["vision"]},
                         "serve": {"cpus_per_replica": 0.2}}])
    cfg = DeployConfig.model_validate(data)
    _, splits = register_versions(cfg, NAME, [0], tmp_path_factory.mktemp("console-model"))
    deploy_model(cfg, cfg.model(NAME))
    wait_for_version(cfg, cfg.model(NAME), 1)
    store = AccessStore(cfg.access_store)
    acme, acme_record = store.create_key("acme", [NAME])
    spare, spare_record = store.create_key("acme", [NAME])
    beta, _ = store.create_key("beta", [NAME])
    store.accept("beta", NAME, store.agreement(NAME).version, "test")
    base = cfg.cluster.base_url
    body = {"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                        "data": splits.x_test[:3].tolist()}]}
    for _ in range(4):  # beta's numbers, which acme must never see
        assert requests.post(f"{base}/v2/models/{NAME}/infer", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {beta}"}).status_code == 200
    yield {"cfg": cfg, "store": store, "base": base, "acme": acme, "spare": spare,
           "spare_id": spare_record.key_id, "acme_id": acme_record.key_id, "beta": beta,
           "body": body}
    delete_apps(model_app_name(NAME), SERVER_APP)


def _get(site, path: str, key: str, **params):
    return requests.get(f"{site['base']}{path}", params=params, timeout=30,
                        headers={"Authorization": f"Bearer {key}"})


def test_the_page_and_its_files_carry_the_security_headers(site):
    page = requests.get(site["base"] + "/", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "maas console" in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("console.js", "playground.js", "usage.js", "uplot.iife.min.js"):
        asset = requests.get(f"{site['base']}/console/{name}", timeout=30)
        assert asset.status_code == 200 and "javascript" in asset.headers["Content-Type"]
    for bad in ("..%2Fserver.py", "nope.js", "uplot-LICENSE.txt"):
        assert requests.get(f"{site['base']}/console/{bad}", timeout=30).status_code == 404
    # No inline script or event-handler attribute: the CSP would (rightly) block them.
    assert not re.findall(r"<script(?![^>]*\bsrc=)|\son[a-z]+=", page.text)


def test_a_tenant_sees_and_touches_only_its_own(site):
    assert _get(site, "/v2/tenant", "maas_000000000000_" + "x" * 43).status_code == 401
    keys = _get(site, "/v2/tenant/keys", site["beta"]).json()
    assert {k["tenant"] for k in keys} == {"beta"} and len(keys) == 1
    usage = until(lambda: (lambda u: u if u["series"] else None)(
        _get(site, "/v2/tenant/usage", site["beta"]).json()), timeout_s=20)
    assert {r["model"] for r in usage["series"]} == {NAME}
    assert sum(r["rows"] for r in usage["series"] if r["status"] == 200) == 12
    assert sum(r["cost"] for r in usage["series"] if r["cost"]) == pytest.approx(12 * 2.0 / 1000)
    # The numbers `maas usage --tenant beta` sums from the same store.
    shown = Counter()
    for row in usage["series"]:
        shown[(row["model"], row["status"])] += row["requests"]
    assert shown == Counter({(r.model, r.status): r.requests
                             for r in site["store"].usage(tenant="beta")})
    assert _get(site, "/v2/tenant/usage", site["acme"]).json()["series"] == []
    # beta may not revoke acme's key: as unknown to it as a key that does not exist
    stolen = requests.post(f"{site['base']}/v2/tenant/keys/{site['acme_id']}/revoke",
                           headers={"Authorization": f"Bearer {site['beta']}"}, timeout=30)
    assert stolen.status_code == 404 and site["store"].key(site["acme_id"]).revoked_at is None
    bad = _get(site, "/v2/tenant/usage", site["beta"], bucket="week")
    assert bad.status_code == 400 and "bucket" in bad.text
    stale = requests.post(f"{site['base']}/v2/tenant/agreements/{NAME}/99", timeout=30,
                          headers={"Authorization": f"Bearer {site['beta']}"})
    assert stale.status_code == 409 and "version" in stale.text


def _wait(driver, css: str, timeout_s: float = 30.0, text: str | None = None, click=False):
    """The first shown element matching ``css`` (holding ``text``), clicked if asked. A view
    that is redrawn while it is read (the keys table after a revoke) is read again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def found():
        try:
            for node in driver.find_elements(By.CSS_SELECTOR, css):
                if node.is_displayed() and (text is None or text in node.text):
                    if click:
                        node.click()
                    return node
        except StaleElementReferenceException:
            pass
        return None
    node = until(found, timeout_s=timeout_s, every_s=0.2)
    assert node is not None, f"{css!r} ({text!r}) never showed:\n{driver.page_source[-3000:]}"
    return node


def _page(driver, name: str, shots=None) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#nav button[data-page='{name}']").click()
    if shots is not None:
        time.sleep(0.3)  # let the page draw before it is photographed
        driver.save_screenshot(str(shots / f"{name}.png"))


def test_a_tenant_signs_in_accepts_plays_sees_usage_and_revokes(site):
    from selenium.webdriver.common.by import By

    shots, store = screenshot_dir(), site["store"]
    driver = start_browser()
    try:
        driver.get(site["base"] + "/")
        _wait(driver, "#key").send_keys("maas_000000000000_" + "y" * 43 + "\n")
        assert "unknown API key" in _wait(driver, "#error").text
        driver.save_screenshot(str(shots / "signin.png"))
        _wait(driver, "#key").send_keys(site["acme"] + "\n")
        card = _wait(driver, f"article[data-model='{NAME}']")
        assert "2 USD / 1k rows" in card.text and "medical" in card.text
        assert "production → v1" in card.text
        driver.save_screenshot(str(shots / "catalog.png"))
        card.find_element(By.CSS_SELECTOR, "button.accept").click()
        _wait(driver, ".accepted", text="accepted")
        assert f"{NAME} v1: running" in driver.find_element(By.ID, "status").text
        (accepted,) = store.acceptances(model=NAME, tenant="acme")
        assert accepted.accepted_by == f"console, key maas_{site['acme_id']}_"

        _page(driver, "playground")
        _wait(driver, "button[data-sample='7']", click=True)
        _wait(driver, "#pg-run", click=True)
        assert "Predicted" in _wait(driver, "#pg-answer", text="Predicted").text
        _wait(driver, ".heat .cell")
        bars = driver.find_elements(By.CSS_SELECTOR, ".bars li")
        cells = driver.find_elements(By.CSS_SELECTOR, ".heat .cell")
        ink = driver.find_elements(By.CSS_SELECTOR, ".draw .cell[aria-pressed='true']")
        assert len(bars) == 10 and len(cells) == 64 and ink
        inked = {int(c.get_attribute("data-pixel")) for c in ink}
        attrs = [float(c.get_attribute("data-attr")) for c in cells]
        assert all(a == 0.0 for i, a in enumerate(attrs) if i not in inked)  # blank: nothing
        assert any(a != 0.0 for a in attrs)
        driver.save_screenshot(str(shots / "playground.png"))

        def requests_shown(model: str) -> int | None:
            from selenium.common.exceptions import StaleElementReferenceException

            _page(driver, "usage", shots)
            row = f"#usage-table tr[data-model='{model}'][data-status='200'] td.requests"
            try:
                rows = driver.find_elements(By.CSS_SELECTOR, row)
                return int(rows[0].text) if rows else None
            except StaleElementReferenceException:  # redrawn while read: read it next time
                return None
        before = until(lambda: requests_shown(NAME), timeout_s=20)
        assert before == 1 and until(lambda: requests_shown(f"{NAME}/explain"), timeout_s=20)
        _page(driver, "playground")  # as it was left: the drawing and its answer
        assert driver.find_elements(By.CSS_SELECTOR, ".draw .cell[aria-pressed='true']")
        _wait(driver, "#pg-run", click=True)
        _wait(driver, ".heat .cell")
        assert until(lambda: requests_shown(NAME) == before + 1, timeout_s=20)
        assert "beta" not in driver.find_element(By.ID, "usage").text

        _page(driver, "keys", shots)
        _wait(driver, f"button.revoke[data-key='{site['spare_id']}']", click=True)
        _wait(driver, f"tr[data-key='{site['spare_id']}']", text="revoked")
        assert until(lambda: requests.post(
            f"{site['base']}/v2/models/{NAME}/infer", json=site["body"], timeout=30,
            headers={"Authorization": f"Bearer {site['spare']}"}).status_code == 401,
            timeout_s=10)
        _wait(driver, f"button.revoke[data-key='{site['acme_id']}']", click=True)
        _wait(driver, "#key")  # signed out: its own key is gone
        _wait(driver, "#key").send_keys(site["acme"] + "\n")
        assert "revoked" in _wait(driver, "#error", text="revoked").text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and "Content Security Policy" in e["message"]]
        assert not errors, errors
    finally:
        driver.quit()
