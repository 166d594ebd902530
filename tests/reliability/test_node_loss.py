"""Node loss: a second Ray node on this machine joins the session's cluster (``ray start
--address``, as a worker machine would), takes one serve replica or one Ray Train worker, and
is killed with all its processes, as a lost machine ends them. Serving goes on from the head
and training resumes from its checkpoint there. Each case starts its own worker node (under a
minute each here, so they run in ``make test``)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from maas.config import ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, register_versions, until
from tests.reliability.traffic import Load
from tests.reliability.training import (assert_resumed_and_met_the_bar, train_through,
                                        train_workers)

pytestmark = pytest.mark.reliability
NAME = "spread"
APP = model_app_name(NAME)


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


@pytest.fixture
def worker_node(serve_port, tmp_path):
    node = WorkerNode(tmp_path)  # it joins the head's temp dir, and records its cluster there
    yield node
    node.kill()


def _replica_nodes() -> dict[int, str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", f"ServeReplica:{APP}:{APP}"),
                                  ("state", "=", "ALIVE")])
    return {a.pid: a.node_id for a in actors}


def test_serving_goes_on_when_a_node_is_lost(worker_node, deploy_cfg, tmp_path, figures):

    _, splits = register_versions(deploy_cfg, NAME, [0], tmp_path)
    # Serve spreads replicas over nodes: one lands on the worker node.
    model = ModelConfig(name=NAME, serve={"num_replicas": 2, "cpus_per_replica": 0.2})
    url = deploy_model(deploy_cfg, model)
    try:
        wait_for_version(deploy_cfg, model, 1)
        placed = _replica_nodes()
        assert worker_node.node_id in placed.values(), placed
        x = splits.x_test[:4]
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.tolist()}]}
        with Load(url, body) as load:
            load.until(300)
            killed = time.monotonic()
            worker_node.kill()
            detected = worker_node.dead_after(120)

            def moved() -> bool:  # both replicas placed again, none on the lost node
                now = _replica_nodes()
                return len(now) == 2 and worker_node.node_id not in now.values()

            on_head = until(moved, 180 - (time.monotonic() - killed), 0.5)
            recovery = time.monotonic() - killed if on_head else float("inf")
            load.until(load.sent + 1000)
    finally:
        delete_apps(APP, SERVER_APP)
    figures.append(load.row("lose a worker node while serving",
                            "SIGKILL every process of the node holding 1 of 2 replicas", recovery,
                            f"; node declared dead after {detected:.0f} s"))
    assert recovery <= 120, load.outcomes
    assert load.failed / load.sent <= 0.05, load.outcomes


def test_training_resumes_on_the_head_when_a_node_is_lost(worker_node, tmp_path, figures):
    def lose_the_node() -> None:
        placed = {worker.node_id for worker in train_workers()}
        assert worker_node.node_id in placed, placed  # SPREAD put a worker there
        worker_node.kill()

    run = train_through(tmp_path, "lose-node", lose_the_node, placement_strategy="SPREAD")
    figures.append(run.row("lose a worker node while training",
                           "SIGKILL every process of the node holding 1 of 2 Train workers",
                           ", SPREAD"))
    assert_resumed_and_met_the_bar(run)
