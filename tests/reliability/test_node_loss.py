"""Node loss: a second Ray node on this machine joins the session's cluster (``ray start
--address``, as a worker machine would), takes one serve replica or one Ray Train worker, and
is killed with all its processes, as a lost machine ends them. Serving goes on from the head
and training resumes from its checkpoint there. Each case starts its own worker node (under a
minute each here, so they run in ``make test``)."""

import time

import pytest

from maas.config import ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, register_versions, until
from tests.reliability.nodes import replica_nodes
from tests.reliability.traffic import Load
from tests.reliability.training import (assert_resumed_and_met_the_bar, train_through,
                                        train_workers)

pytestmark = pytest.mark.reliability
NAME = "spread"
APP = model_app_name(NAME)


def test_serving_goes_on_when_a_node_is_lost(worker_node, deploy_cfg, tmp_path, figures):

    _, splits = register_versions(deploy_cfg, NAME, [0], tmp_path)
    # Serve spreads replicas over nodes: one lands on the worker node.
    model = ModelConfig(name=NAME, serve={"num_replicas": 2, "cpus_per_replica": 0.2})
    url = deploy_model(deploy_cfg, model)
    try:
        wait_for_version(deploy_cfg, model, 1)
        placed = replica_nodes(APP)
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
                now = replica_nodes(APP)
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
