"""A second Ray node on this machine, as a worker machine would join the session's cluster
(``ray start --address``), and where a Serve app's replicas run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import until


class WorkerNode:
    """``ray start --block`` joined to the session's cluster with 1 CPU, in its own session."""

    def __init__(self, tmp: Path):
        import ray

        self.nodes_before = {n["NodeID"] for n in ray.nodes()}
        ray_cli = Path(sys.executable).with_name("ray")
        self.log = tmp / "worker-node.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(ray_cli), "start", "--block", "--disable-usage-stats",
                 "--address", ray.get_runtime_context().gcs_address, "--num-cpus", "1",
                 "--object-store-memory", str(200 * 2**20)],
                env=os.environ | {"RAY_AUTH_MODE": "token"}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.node_id = self._wait_joined(60)

    def _wait_joined(self, timeout_s: float) -> str:
        import ray

        def joined() -> str | None:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            return next((n["NodeID"] for n in ray.nodes()
                         if n["Alive"] and n["NodeID"] not in self.nodes_before), None)

        node_id = until(joined, timeout_s, 0.5)
        assert node_id, f"worker node not joined in {timeout_s}s: {self.log.read_text()[-2000:]}"
        return node_id

    def kill(self) -> None:
        """SIGKILL the raylet and every process of the node at once: a machine lost."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.kill()
        self.proc.wait(timeout=30)

    def dead_after(self, timeout_s: float) -> float:
        """Seconds until the cluster reports the node dead."""
        import ray

        started = time.monotonic()
        gone = until(lambda: not any(n["Alive"] for n in ray.nodes()
                                     if n["NodeID"] == self.node_id), timeout_s, 0.5)
        return time.monotonic() - started if gone else float("inf")


def replica_nodes(app: str) -> dict[int, str]:
    """pid -> node id of ``app``'s live replicas."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", f"ServeReplica:{app}:{app}"),
                                  ("state", "=", "ALIVE")])
    return {a.pid: a.node_id for a in actors}
