"""One local Ray cluster (2 CPUs, like the CI machine) and one Serve instance per test session."""

import os
import socket
from pathlib import Path

import pytest

from maas.config import DeployConfig, parse_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="session")
def serve_port(metrics_port: int) -> int:
    """A local Ray cluster and Serve on a free port; both are shut down after the session."""
    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    # Serve's python proxy here: under HAProxy every deploy and delete took 30-60 s on this
    # machine, which would double this tier's time. tests/e2e runs the default (haproxy)
    # through `maas up`, and bench/serve_bench.py measures both.
    os.environ.update(serve_env(ClusterConfig(serve_ingress="python")))
    import ray
    from ray import serve

    # address="local": a private cluster, even when `maas up` runs one on this machine. The
    # dashboard serves Ray's state API, which the fault tests use to find worker processes.
    ray.init(address="local", num_cpus=2, include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=_free_port(),
             _metrics_export_port=metrics_port)
    port = _free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def deploy_cfg(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> DeployConfig:
    """The shipped model settings with fewer epochs, private state and the session's port."""
    state: Path = tmp_path_factory.mktemp("maas-state")
    return parse_config({
        "state_dir": str(state),
        "cluster": {"http_port": serve_port},
        "models": [{
            "name": "digits",
            "train": {"workers": 2, "epochs": 8, "batch_size": 32, "lr": 0.002},
        }],
    }, source="integration")
