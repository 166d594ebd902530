"""What the cluster exposes: every socket a Ray process of this machine listens on, by the
address it binds; Serve's HTTP port and the dashboard bound to 127.0.0.1 only; token auth
refusing a dashboard request and a GCS client that come without the token; and, tried from
the machine's own non-loopback address as another machine would, no port that names a tenant
(tests/exposure.py; tests/e2e checks that nothing of `maas up`'s head answers there at all)."""

import os
import subprocess
import sys
from collections import Counter

import pytest
import requests

from maas.cluster import dashboard_url
from tests.conftest import session_token
from tests.exposure import from_the_network, listeners, machine_ip, open_to_anyone, scope

pytestmark = pytest.mark.reliability


def test_ports_bind_where_they_should_and_token_auth_holds(serve_port, figures):
    import ray

    dashboard = dashboard_url()
    dashboard_port = int(dashboard.rsplit(":", 1)[1])
    sockets = listeners()
    by_scope = Counter(scope(ip) for ip, _, _ in sockets)
    wide = sorted({f"{title}:{port}" for ip, port, title in sockets if scope(ip) != "loopback"})

    token = session_token()
    refused = requests.get(f"{dashboard}/api/version", timeout=10)
    allowed = requests.get(f"{dashboard}/api/version", timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
    # A Ray client without the token: GCS answers InvalidAuthToken (the client retries, so
    # it is stopped after the first refusals are logged).
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(address="
             f"{ray.get_runtime_context().gcs_address!r})"],
            env=os.environ | {"RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
            timeout=8)
        gcs_said = probe.stdout + probe.stderr
    except subprocess.TimeoutExpired as exc:
        gcs_said = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()

    here = machine_ip()
    network = from_the_network(here, tenants=["metered-co", "prom-co"]) if here else []
    # This head takes the machine's address so that other nodes can join it (test_node_loss,
    # test_two_nodes), as a cluster's head does: Ray's metrics agent then answers the network
    # without credentials (a NetworkPolicy's job; `maas up`'s head is loopback only, which
    # tests/e2e checks the same way). What it answers must name no tenant.
    checks = {
        "a non-loopback address to try from": here is not None,
        "no port names a tenant to the network": not any(a.tenant_data for a in network),
        "Serve HTTP on loopback only": all(scope(ip) == "loopback" for ip, port, _ in sockets
                                           if port == serve_port),
        "dashboard on loopback only": all(scope(ip) == "loopback" for ip, port, _ in sockets
                                          if port == dashboard_port),
        "dashboard refuses no token": refused.status_code == 401,
        "dashboard takes the token": allowed.status_code == 200,
        "GCS refuses no token": "InvalidAuthToken" in gcs_said,
    }
    figures.append({"test": "what listens where", "fault": "a client on the network; a client "
                                                           "without the Ray token",
                    "load": f"{len(sockets)} listening sockets of Ray processes: "
                            f"{dict(by_scope)}; beyond loopback: {', '.join(wide) or 'none'}; "
                            f"reachable from {here}: {len(network)} ports, answering without "
                            "credentials: " + (", ".join(f"{a.title}:{a.port}"
                                                         for a in open_to_anyone(network))
                                               or "none"),
                    "sent": len(checks), "failed": sum(not ok for ok in checks.values()),
                    "retries": 0, "recovery_s": 0.0, "command": "make test-reliability"})
    assert all(checks.values()), (checks, network)
    assert any(port == serve_port for _, port, _ in sockets), sockets
