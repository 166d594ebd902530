"""Connecting to Ray, and the local head that ``maas up`` / ``maas down`` manage.

Which cluster a command uses, in order:
1. ``RAY_ADDRESS`` from the environment (set by Ray for every submitted job);
2. ``cluster.address`` from deploy.yaml;
3. a head already running on this machine (started by ``maas up``);
4. otherwise an embedded head that lives as long as the calling process.

Token authentication stays on: every process maas starts or connects from gets
``RAY_AUTH_MODE=token`` unless the caller set a mode explicitly.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maas.config import ClusterConfig

log = logging.getLogger(__name__)

GCS_PORT = 6379
AUTH_MODE = "token"
# Ray swaps a loopback node address (`--node-ip-address 127.0.0.1`) for the machine's, and then
# binds its metrics agent (unauthenticated), GCS and raylet beyond loopback, unless this is "0"
# (the single-machine behaviour Ray keeps for Windows and macOS). `maas up` is one machine:
# its head and every driver that attaches to it run with it (see attach()).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Process names and command-line fragments of every Ray process `ray start` launches.
_RAY_PROCESS_MARKERS = ("gcs_server", "raylet", "ray::", "ray/dashboard", "ray/_private",
                        "ray/autoscaler", "default_worker.py", "ray_client_server",
                        "runtime_env/agent", "ray-dashboard")


@dataclass(frozen=True)
class Connection:
    """How this process is attached to Ray."""

    mode: str  # "remote" (an address), "local" (maas up head), "embedded" or "attached"
    address: str
    dashboard_url: str | None


def ensure_auth_mode() -> None:
    """Make the auth mode explicit for this process and its children.

    Call it before ``import ray``: Ray reads RAY_AUTH_MODE once, when it is first imported.
    """
    os.environ.setdefault("RAY_AUTH_MODE", AUTH_MODE)


def serve_env(cfg: ClusterConfig) -> dict[str, str]:
    """The environment Ray's processes need for ``cluster.serve_ingress``: Serve reads these
    when its controller, proxies and replicas start, so they go to the head (`maas up`, or an
    embedded head), not to a client."""
    haproxy = "1" if cfg.serve_ingress == "haproxy" else "0"
    return {"RAY_SERVE_ENABLE_HA_PROXY": haproxy, "RAY_SERVE_THROUGHPUT_OPTIMIZED": haproxy,
            # Serve's HTTP servers add serve_apps.ingress's middleware (infer requests skip
            # the disconnect watch).
            "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_apps.ingress:middlewares",
            # HAProxy's per-request metrics are log lines parsed in Python (~0.1 core at
            # 3,000 req/s, measured); the replicas count the same requests themselves.
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
            "RAY_SERVE_HAPROXY_NBTHREAD": str(cfg.haproxy_threads),
            # The one proxy (HeadOnly) spreads requests over every node's replicas: Serve's
            # default sends a proxy's requests to its own node's replicas while they have
            # room, so the replicas of other nodes stood idle (measured: 610 of 610 requests
            # on the head's replica, tests/reliability/test_two_nodes.py).
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(cfg.haproxy_drain_s)}


def _ray_bin(name: str) -> str:
    """The `ray`/`serve` executable of this Python environment, not whatever PATH finds first."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def configured_address(cfg: ClusterConfig) -> str | None:
    return os.environ.get("RAY_ADDRESS") or cfg.address


def _loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _stay_on_loopback() -> None:
    """This process's Ray node address stays 127.0.0.1 (LOOPBACK_ENV's switch). Ray reads the
    switch from its constants module when it works out the address, and that module may have
    been imported before the variable could be set."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def attach(address: str, **init_args) -> None:
    """``ray.init(address)``; to a head on a loopback address (`maas up`'s) as a node on
    loopback too: the driver must report the address the head's raylet registered
    (127.0.0.1) or it finds no raylet."""
    import ray

    if _loopback(address):
        _stay_on_loopback()
    ray.init(address=address, **init_args)


def connect(cfg: ClusterConfig, log_to_driver: bool = True) -> Connection:
    """Attach this process to Ray, following the order in the module docstring.
    ``log_to_driver`` False: the workers' output stays in the session's log files (the
    dashboard shows it) instead of being streamed to this process."""
    ensure_auth_mode()  # before the first `import ray`: Ray reads the mode when it loads
    import ray

    if ray.is_initialized():
        context = ray.get_runtime_context()
        return Connection("attached", context.gcs_address, dashboard_url())
    address = configured_address(cfg)
    if address:
        attach(address, log_to_driver=log_to_driver)
        return Connection("remote", address, dashboard_url())
    local = local_head_address()
    if local is not None:
        attach(local, log_to_driver=log_to_driver)
        return Connection("local", local, dashboard_url())
    # Inherited by the embedded head's processes; on loopback like `maas up`'s head.
    os.environ.update(serve_env(cfg) | LOOPBACK_ENV)
    _stay_on_loopback()
    ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
             include_dashboard=True, dashboard_host=cfg.dashboard_host,
             dashboard_port=cfg.dashboard_port, log_to_driver=log_to_driver)
    return Connection("embedded", ray.get_runtime_context().gcs_address, dashboard_url())


def session_logs_dir() -> Path | None:
    """The connected Ray session's log folder when it is on this machine (a local or
    embedded head; the dashboard's Logs page lists its files), else None."""
    # No public API names it; the node object ray.init made knows it.
    from ray._private.worker import _global_node

    if _global_node is None:
        return None
    folder = Path(_global_node.get_logs_dir_path())
    return folder if folder.is_dir() else None


def dashboard_url() -> str | None:
    # No public API returns the dashboard address after ray.init; this is what ray.init prints.
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def local_head_address() -> str | None:
    """The GCS address of a Ray head running on this machine: `maas up`'s, or the one Ray
    recorded for the last `ray start` here; None when neither answers.

    Checked by connecting to the port first: Ray's own ``address="auto"`` trusts the recorded
    address and, when that cluster is gone (a killed test cluster, a rebooted head), retries
    it for a minute before it fails."""
    recorded = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    candidates = [f"127.0.0.1:{GCS_PORT}"]
    try:
        candidates.append(recorded.read_text().strip())
    except OSError:
        pass
    return next((address for address in candidates if address and _listening(address)), None)


def head_running() -> bool:
    """True when a Ray head started on this machine (e.g. by `maas up`) is reachable."""
    address = local_head_address()
    if address is None:
        return False
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", AUTH_MODE)}
    probe = subprocess.run(
        [sys.executable, "-c", "import ray; from maas.cluster import attach; "
         f"attach({address!r}); ray.shutdown()"],
        env=env, capture_output=True, timeout=60,
    )
    return probe.returncode == 0


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {done.returncode}:\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def up(cfg: ClusterConfig) -> None:
    """Start a detached local Ray head with token auth, the dashboard and Serve's HTTP proxy."""
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", AUTH_MODE)}
    env |= serve_env(cfg) | LOOPBACK_ENV  # its processes, jobs and replicas inherit both
    env.pop("RAY_ADDRESS", None)
    # Job entrypoints (`python -m jobs.pipeline ...`) run with the head's PATH: put this
    # environment's interpreter first, so jobs see the packages maas was installed with.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # `ray start` needs a token on disk before it starts with auth on (~/.ray/auth_token).
    _run([_ray_bin("ray"), "get-auth-token", "--generate"], env)
    start = [_ray_bin("ray"), "start", "--head", "--port", str(GCS_PORT),
             "--node-ip-address", "127.0.0.1",
             "--dashboard-host", cfg.dashboard_host, "--dashboard-port", str(cfg.dashboard_port),
             "--metrics-export-port", str(cfg.metrics_port), "--disable-usage-stats"]
    if cfg.num_cpus is not None:
        start += ["--num-cpus", str(cfg.num_cpus)]
    if cfg.num_gpus is not None:
        start += ["--num-gpus", str(cfg.num_gpus)]
    _run(start, env)
    _run([_ray_bin("serve"), "start", "--address", f"127.0.0.1:{GCS_PORT}",
          "--http-host", cfg.http_host, "--http-port", str(cfg.http_port),
          "--proxy-location", "HeadOnly"], env)


def ray_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every Ray process of this user on this machine."""
    import psutil

    found = []
    me = psutil.Process()
    for proc in psutil.process_iter(["pid", "name", "cmdline", "username"]):
        try:
            if proc.info["pid"] == me.pid or proc.info["username"] != me.username():
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            text = f"{proc.info['name']} {cmdline}"
            if any(marker in text for marker in _RAY_PROCESS_MARKERS):
                found.append((proc.info["pid"], cmdline[:200]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def down(timeout_s: float = 60.0) -> list[tuple[int, str]]:
    """Stop every Ray process of this user here; return any that survived ``timeout_s``."""
    env = os.environ | {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", AUTH_MODE)}
    subprocess.run([_ray_bin("ray"), "stop"], env=env, capture_output=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = ray_processes()
        if not left:
            return []
        # Workers that ignore SIGTERM get SIGKILL, as `ray stop --force` does.
        subprocess.run([_ray_bin("ray"), "stop", "--force"], env=env, capture_output=True)
        time.sleep(0.5)
    return ray_processes()
