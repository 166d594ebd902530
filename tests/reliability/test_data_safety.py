"""The access store under kill -9: a writer killed mid-transaction leaves a database that
passes SQLite's integrity check, with every transaction either whole or absent."""

import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from maas.access import AccessStore

pytestmark = pytest.mark.reliability


def _until(check, timeout_s: float = 60.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.05)

# Each transaction adds 1 to two usage rows; a torn transaction would leave them unequal.
WRITER = """
import sys, time
from maas.access import AccessStore
store = AccessStore(sys.argv[1])
minute = int(time.time() // 60 * 60)
print("ready", flush=True)
while True:
    store.add_usage({(minute, "a", "k", "m", "1", 200): [1, 1, 1.0],
                     (minute, "b", "k", "m", "1", 200): [1, 1, 1.0]})
"""


def test_usage_writes_survive_kill_9(tmp_path, figures):
    url = f"sqlite:///{tmp_path / 'access.db'}"
    store = AccessStore(url)
    kills, torn = 0, 0

    def written() -> int:
        return sum(r.requests for r in store.usage(tenant="a"))

    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline().strip() == "ready"
        start = written()
        _until(lambda: written() >= start + 50)  # mid-stream; the kill lands wherever it lands
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        kills += 1
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar_one() == "ok"
        counts = {r.tenant: r.requests for r in store.usage()}
        torn += counts.get("a") != counts.get("b")
    written = store.usage()[0].requests
    figures.append({"test": "kill -9 a usage writer", "fault": "SIGKILL mid-write, 5 times",
                    "load": "one process adding usage in a loop", "sent": written,
                    "failed": torn, "retries": 0, "recovery_s": 0.0,
                    "command": "make test-reliability"})
    assert written > 0 and torn == 0


REGISTRAR = """
import sys
from pathlib import Path
from maas.config import parse_config
from maas.registry import Registry
from maas.tracking import Tracker
cfg = parse_config({"state_dir": sys.argv[1], "models": [{"name": "m"}]})
registry = Registry.from_config(cfg)
run_id = Tracker(cfg).start("kill-9", params={}, tags={})
print("ready", flush=True)
while True:
    registry.register("m", Path(sys.argv[2]), run_id=run_id, metrics={}, variant="fp32",
                      data_fingerprint="x", config_digest="x")
"""


def test_the_registry_survives_kill_9_mid_registration(tmp_path, figures):
    from maas.config import parse_config
    from maas.registry import Registry
    from tests.conftest import export_small_model

    model = export_small_model(tmp_path / "m.onnx")
    state = tmp_path / "state"
    registry = Registry.from_config(parse_config({"state_dir": str(state),
                                                  "models": [{"name": "m"}]}))

    def registered() -> int:
        try:
            return len(registry.version_numbers("m"))
        except Exception:  # noqa: BLE001 - not created yet by the first writer
            return 0

    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", REGISTRAR, str(state), str(model)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        start = registered()
        _until(lambda: registered() >= start + 5)  # a few in; the kill lands wherever it lands
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    numbers = registry.version_numbers("m")
    broken = []
    for number in numbers:
        try:
            registry.load(registry.get("m", number))  # both hashes checked
        except Exception as exc:  # noqa: BLE001 - any failure is a broken version
            broken.append((number, repr(exc)[:200]))
    figures.append({"test": "kill -9 a registration", "fault": "SIGKILL mid-register, 4 times",
                    "load": "one process registering versions in a loop", "sent": len(numbers),
                    "failed": len(broken), "retries": 0, "recovery_s": 0.0,
                    "command": "make test-reliability"})
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, numbers
    assert broken == []
