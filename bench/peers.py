"""Peer model servers that bench/serve_bench.py measures maas against: MLServer and KServe.

    from peers import PEERS, ensure_venv, infer_url, start, stop   # bench/ is on sys.path

Each peer is pip-installed into its own venv (bench/out/venvs/<name>, git-ignored), never into
the project's: their pins (fastapi, pydantic, grpcio, protobuf...) would fight ray's and
mlflow's. Both serve the same ONNX file as the baseline and maas, with the same ONNX Runtime
settings (1 intra-op and 1 inter-op thread, sequential, CPU), as ONE process, on the same
Open Inference Protocol v2 JSON body: ``POST /v2/models/{name}/infer``. Both log at warning
level and above, without per-request access log lines, like bench/baseline_server.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"  # git-ignored
NAME = "bench"  # serve_bench.py's model name


@dataclass(frozen=True)
class Peer:
    name: str  # venv folder and PEERS key
    label: str  # for tables and plots
    requirements: tuple[str, ...]  # pip requirement strings, pinned


# onnxruntime and numpy: the versions of the project's own venv, so that only the server differs.
_ORT = ("onnxruntime==1.32.0", "numpy==2.4.6")
PEERS: dict[str, Peer] = {
    # httptools: MLServer requires plain uvicorn, whose pure-Python h11 parser would be the only
    # one in the comparison; the project's venv (baseline, maas) and KServe's have httptools.
    "mlserver": Peer("mlserver", "MLServer 1.7.1",
                     ("mlserver==1.7.1", "httptools==0.9.0", *_ORT)),
    "kserve": Peer("kserve", "KServe 0.21.0", ("kserve==0.21.0", *_ORT)),
}


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(peer: Peer, root: Path = OUT) -> Path:
    """``root/venvs/<name>`` with ``peer.requirements`` installed; pip runs only when the pins
    (or the interpreter) changed since the last successful install."""
    venv = root / "venvs" / peer.name
    stamp = venv / ".pins.sha256"
    digest = hashlib.sha256("\n".join((sys.version, *peer.requirements)).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest and _python(venv).exists():
        return venv
    # --clear: a half-built venv from an interrupted install must not leak stale packages.
    # sys.executable is the python3 running the bench; venv links the new one to its base.
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    print(f"[peers] installing {' '.join(peer.requirements)} into {venv} (a few minutes, once)",
          file=sys.stderr, flush=True)
    # -q: one line per problem, no per-package chatter; stderr is kept to name what failed.
    pip = subprocess.run([str(_python(venv)), "-m", "pip", "install", "-q",
                          "--progress-bar", "off", *peer.requirements],
                         stderr=subprocess.PIPE, text=True)
    if pip.returncode != 0:
        failing = [r for r in peer.requirements
                   if re.search(re.escape(r.split("==")[0]), pip.stderr, re.IGNORECASE)]
        errors = [ln[:300] for ln in pip.stderr.splitlines() if ln.startswith("ERROR")] or \
            pip.stderr.splitlines()[-5:]  # [:300]: "from versions: ..." lists every release
        raise RuntimeError(f"pip could not install {', '.join(failing) or peer.requirements} "
                           f"for {peer.label} into {venv}:\n" + "\n".join(errors))
    stamp.write_text(digest)
    return venv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def infer_url(peer: Peer, port: int, name: str = NAME) -> str:
    return f"http://127.0.0.1:{port}/v2/models/{name}/infer"


def ready_url(peer: Peer, port: int, name: str = NAME) -> str:
    """The v2 model-readiness route (200 once loaded); both peers serve it."""
    return f"http://127.0.0.1:{port}/v2/models/{name}/ready"


def wait_ready(peer: Peer, proc: subprocess.Popen, port: int, name: str = NAME,
               timeout_s: float = 90) -> None:
    """Poll ready_url until 200. Not serve_bench's POST of ``{}``: MLServer answers it 422 and
    KServe 400 (no Content-Type: it takes the body for binary tensors)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{peer.label} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(ready_url(peer, port, name), timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:  # refused while starting; HTTPError (4xx/5xx) is an OSError too
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{peer.label} was not ready within {timeout_s} s")


# MLServer's default logging config is dictConfig'd by MLServer and uvicorn; this one keeps only
# warnings and errors, so no per-request "POST /v2/... 200" access lines.
_QUIET_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stderr"}},
    "loggers": {**{name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
                   for name in ("mlserver", "uvicorn", "uvicorn.error")},
                # No handler: uvicorn then skips the access line altogether.
                "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}


def _mlserver_folder(model: Path, port: int, folder: Path, name: str) -> None:
    """settings.json and model-settings.json for ``mlserver start folder``."""
    (folder / "logging.json").write_text(json.dumps(_QUIET_LOGGING))
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        # MLServer always starts its gRPC server (no setting turns it off): give it a free
        # port (on host too); nothing calls it.
        "grpc_port": free_port(),
        # Metrics on, as MLServer ships (a free port of their own): maas and KServe record
        # theirs on every request too.
        "metrics_port": free_port(),
        # 0: the model runs in the server process itself, one process like the other peers
        # (the default, 1, adds an inference worker process behind a queue).
        "parallel_workers": 0,
        "debug": False,  # True would add the access log and DEBUG logging
        # No gzip of replies: loadgen's aiohttp asks for it, and the baseline and maas send
        # plain JSON; compressing a 64-row reply would be work only this peer does.
        "gzip_enabled": False,
        "logging_settings": str(folder / "logging.json"),
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": name,
        # mlserver_model.py, imported from bench/peers/ (on PYTHONPATH, see start()).
        "implementation": "mlserver_model.OnnxModel",
        "parameters": {"uri": str(model.resolve())},
    }
    # In a subfolder named after the model: MLServer finds model-settings.json files
    # recursively and warns when a model's name differs from its folder's.
    (folder / name).mkdir(exist_ok=True)
    (folder / name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def start(peer: Peer, model: Path, port: int, folder: Path, *, name: str = NAME,
          root: Path = OUT) -> subprocess.Popen:
    """Start ``peer`` serving ``model`` as ``name`` on 127.0.0.1:``port``; ``folder`` holds its
    config files. Returns at once: wait_ready(...) before sending load."""
    venv = ensure_venv(peer, root)
    folder.mkdir(parents=True, exist_ok=True)  # also the cwd: MLServer puts .envs/ etc. there
    if peer.name == "mlserver":
        _mlserver_folder(model, port, folder, name)
        # PYTHONPATH: the custom runtime module; MLServer also adds the model folder to
        # sys.path, but ours lives in bench/peers/, not next to model-settings.json.
        env = {"PYTHONPATH": str(BENCH / "peers")}
        cmd = [str(venv / "bin" / "mlserver"), "start", str(folder)]
    elif peer.name == "kserve":
        env = {}
        cmd = [str(_python(venv)), str(BENCH / "peers" / "kserve_model.py"), str(model),
               "--model_name", name, "--http_port", str(port)]
    else:
        raise ValueError(f"unknown peer {peer.name!r}")
    # PYTHONPATH is replaced, not extended: the project's paths must not leak into a peer venv.
    return subprocess.Popen(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": "", **env})


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (both servers shut down gracefully on it), SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
