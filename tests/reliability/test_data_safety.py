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
    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let it be mid-stream; the kill lands wherever it lands
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        kills += 1
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar_one() == "ok"
        counts = {r["tenant"]: r["requests"] for r in store.usage()}
        torn += counts.get("a") != counts.get("b")
    written = store.usage()[0]["requests"]
    figures.append({"test": "kill -9 a usage writer", "fault": "SIGKILL mid-write, 5 times",
                    "load": "one process adding usage in a loop", "sent": written,
                    "failed": torn, "retries": 0, "recovery_s": 0.0,
                    "command": "make test-reliability"})
    assert written > 0 and torn == 0
