"""The console's static side (no Ray): its files, the headers they carry, the links it shows
to whoever opens the page."""

import re

import pytest

from maas.oip import InferError
from serve_apps import console

pytestmark = pytest.mark.unit


def test_every_file_the_page_loads_is_packaged_and_served_with_the_headers():
    page = console.page()
    html = page.body.decode()
    assert page.headers["content-security-policy"] == console.SECURITY_HEADERS[
        "Content-Security-Policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    loaded = re.findall(r'(?:src|href)="/console/([^"]+)"', html)
    assert {"console.js", "playground.js", "usage.js", "uplot.iife.min.js",
            "console.css", "uplot.min.css"} == set(loaded)
    for name in loaded:
        served = console.asset(name)
        assert served.headers["x-content-type-options"] == "nosniff" and served.body
    assert not re.search(r"<script(?![^>]*\bsrc=)|\son[a-z]+=|style=", html)


@pytest.mark.parametrize("name", ["../server.py", "console", "uplot-LICENSE.txt", ".hidden.js",
                                  "x" * 70 + ".js", "nope.js"])
def test_anything_else_is_404(name):
    with pytest.raises(InferError) as refused:
        console.asset(name)
    assert refused.value.status == 404


def test_the_status_links_show_no_credentials_and_no_local_path():
    server = console.links("https://alice:s3cret@mlflow.example:5000/x", None)
    assert server["mlflow"] == "https://mlflow.example:5000/x" and "s3cret" not in str(server)
    local = console.links("sqlite:////home/alice/.maas/mlflow.db", "http://127.0.0.1:8265")
    assert local["mlflow"] is None and "alice" not in str(local)
    assert local["dashboard"] == "http://127.0.0.1:8265"


def test_an_explanation_is_priced_as_its_models_rows():
    from maas.routes import explain_usage_name, priced_as

    assert priced_as(explain_usage_name("digits")) == "digits" == priced_as("digits")
    assert priced_as("ft-abc") == "ft-abc"
