"""The serving hot path without Ray: the micro-batcher, the infer front, its JSON codec and the
middleware that spares infer requests Serve's disconnect watch."""

import asyncio
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from maas.errors import MaasError
from maas.oip import (InferenceRequest, InferenceResponse, encode_output, parse_request,
                      response_json)
from serve_apps.batching import MicroBatcher, run_batch
from serve_apps.infer_route import InferFront, InferRouteTag, infer_target
from serve_apps.ingress import DISCONNECT_OFF, QuickInfer

pytestmark = pytest.mark.unit


class Doubler:
    """A model that doubles its input, counting its calls and the threads they ran on."""

    def __init__(self, fail_on: float | None = None):
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def run(self, wanted: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        self.calls.append(len(x))
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("bad row")
        return [x * 2]


def _item(model, *rows: float):
    return (model, ("y",), {"x": np.array([[r] for r in rows], dtype=np.float32)})


def test_requests_queued_together_run_as_one_call_and_get_their_own_rows():
    model, sizes = Doubler(), []

    async def main():
        batcher = MicroBatcher(16, 0.0, 0.0, sizes.append)  # 0: always on the batch thread
        answers = await asyncio.gather(*(batcher.run(_item(model, i, i + 0.5))
                                         for i in range(5)))
        batcher.close()
        return answers

    answers = asyncio.run(main())
    assert model.calls == [10] and sizes == [5]
    for i, (y,) in enumerate(answers):
        np.testing.assert_array_equal(y, [[2 * i], [2 * i + 1]])
    assert all(name.startswith("maas-batch") for name in model.threads)


def test_a_batch_holds_at_most_max_batch_size_requests():
    model, sizes = Doubler(), []

    async def main():
        batcher = MicroBatcher(2, 0.0, 0.0, sizes.append)
        await asyncio.gather(*(batcher.run(_item(model, i)) for i in range(5)))
        batcher.close()

    asyncio.run(main())
    assert sizes == [2, 2, 1] and model.calls == [2, 2, 1]


def test_a_full_batch_does_not_wait_out_wait_ms():
    model = Doubler()

    async def main():
        batcher = MicroBatcher(2, 30.0, 0.0, lambda size: None)  # would hold a batch 30 s
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(batcher.run(_item(model, 1)),
                                              batcher.run(_item(model, 2))), timeout=5)
        batcher.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 5 and model.calls == [2]


def test_a_cheap_model_runs_on_the_event_loop_once_measured():
    model = Doubler()

    async def main():
        batcher = MicroBatcher(16, 0.0, 1.0, lambda size: None)  # anything under 1 s: inline
        assert not batcher.inline(1)  # not measured yet: the first batch goes to the thread
        await batcher.run(_item(model, 1))
        assert batcher.inline(1) and not batcher.inline(2)  # 2 rows were never measured
        await batcher.run(_item(model, 2))
        batcher.close()
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert len(model.threads) == 2 and loop_thread in model.threads
    assert any(name.startswith("maas-batch") for name in model.threads)


def _busy(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_batches_that_measured_slow_go_to_the_thread_until_measured_fast_again():
    batcher = MicroBatcher(16, 0.0, 0.05, lambda size: None)
    slow, fast = Doubler(), Doubler()
    slow.run = lambda wanted, feeds: (_busy(0.06), [feeds["x"]])[1]
    batcher._timed([_item(fast, *range(8))], 8, False)
    assert batcher.inline(8) and batcher.inline(3)
    batcher._timed([_item(slow, *range(4))], 4, False)  # 4 rows took 0.06 s of CPU
    assert not batcher.inline(4) and not batcher.inline(8) and batcher.inline(3)
    batcher._timed([_item(fast, *range(6))], 6, False)  # measured fast again: 6 rows are cheap
    assert batcher.inline(6) and batcher.inline(4)


def test_a_thread_batch_is_timed_by_its_cpu_and_a_loop_batch_by_the_clock():
    batcher = MicroBatcher(16, 0.0, 0.05, lambda size: None)
    waits = Doubler()  # cheap, but 0.06 s pass while it runs (as when it waits for the GIL)
    waits.run = lambda wanted, feeds: (time.sleep(0.06), [feeds["x"]])[1]
    batcher._timed([_item(waits, 1)], 1, False)
    assert batcher.inline(1)  # the thread's CPU time: cheap
    batcher._distrust_s = 30.0  # (its first is shorter than this test's steps)
    batcher._timed([_item(waits, 1)], 1, True)  # on the loop, the loop was held 0.06 s
    assert not batcher.inline(1)
    batcher._timed([_item(waits, 1)], 1, False)  # the thread's word is not taken for now
    assert not batcher.inline(1)
    batcher._distrust_until = 0.0  # ... until its time is up
    batcher._timed([_item(waits, 1)], 1, False)
    assert batcher.inline(1) and batcher._distrust_s == 60.0  # the next lasts longer


def test_a_request_alone_runs_at_once_and_one_among_others_waits_for_its_batch():
    model, sizes = Doubler(), []

    async def main():
        batcher = MicroBatcher(16, 0.0, 1.0, sizes.append)
        await batcher.run(_item(model, 1))  # measured (on the thread): cheap
        alone = batcher.run(_item(model, 2), alone=True)
        try:  # finished without ever suspending: no queue, no future, no turn of the loop
            alone.send(None)
        except StopIteration as done:
            np.testing.assert_array_equal(done.value[0], [[4]])
        else:
            raise AssertionError("a request alone waited for the loop")
        together = await asyncio.gather(batcher.run(_item(model, 3)), batcher.run(_item(model, 4)))
        with pytest.raises(RuntimeError, match="bad row"):
            await batcher.run(_item(Doubler(fail_on=5.0), 5), alone=True)
        batcher.close()
        return together

    together = asyncio.run(main())
    assert model.calls == [1, 1, 2] and sizes == [1, 1, 2, 1]
    assert [a[0][0][0] for a in together] == [6, 8]


def test_a_failing_group_fails_only_its_own_requests():
    good, bad = Doubler(), Doubler(fail_on=7.0)
    results = run_batch([_item(good, 1), _item(bad, 7), _item(good, 2)])
    np.testing.assert_array_equal(results[0][0], [[2]])
    assert isinstance(results[1], RuntimeError)
    np.testing.assert_array_equal(results[2][0], [[4]])


def test_outputs_that_are_not_per_row_run_request_by_request():
    class Summer(Doubler):
        def run(self, wanted, feeds):
            self.calls.append(len(feeds["x"]))
            return [feeds["x"].sum(keepdims=True).reshape(())]

    model = Summer()
    results = run_batch([_item(model, 1, 2), _item(model, 3)])
    assert [float(r[0]) for r in results] == [3.0, 3.0] and model.calls == [3, 2, 1]


@pytest.mark.parametrize("route, expected", [
    ("/infer", (True, None)), ("/versions/3/infer", (True, "3")),
    ("/versions/x/infer", (True, "x")),  # a bad number is the version lookup's 404
    ("/versions//infer", (False, None)), ("/versions/1/2/infer", (False, None)),
    ("/", (False, None)), ("/ready", (False, None)), ("/inferx", (False, None)),
])
def test_infer_routes_are_recognised(route, expected):
    assert infer_target(route) == expected


def test_the_json_answer_reads_back_like_the_pydantic_one():
    probs = np.array([[0.1, 0.2], [1e-8, 3.0]], dtype=np.float32)
    labels = np.array([1, 0], dtype=np.int64)
    fast = json.loads(response_json("m", "2", "req-1", [("p", probs), ("label", labels)]))
    slow = json.loads(InferenceResponse(model_name="m", model_version="2", id="req-1", outputs=[
        encode_output("p", probs), encode_output("label", labels)]).model_dump_json())
    assert fast.keys() == slow.keys() and fast["outputs"][1] == slow["outputs"][1]
    for a, b in zip(fast["outputs"][0]["data"], slow["outputs"][0]["data"]):
        assert np.float32(a) == np.float32(b)  # shortest form, the same float32
    with pytest.raises(TypeError, match="OIP JSON cannot carry"):
        response_json("m", "1", None, [("x", np.array(["a"], dtype=object))])


def test_requests_parse_the_same_on_both_parsers_and_bad_json_is_named():
    raw = b'{"id": "a", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", ' \
          b'"data": [1.5, 2]}]}'
    assert parse_request(raw, None) == InferenceRequest.model_validate_json(raw)
    with pytest.raises(ValidationError) as info:
        parse_request(b'{"inputs": [', None)
    assert info.value.errors()[0]["type"] == "json_invalid"


def _scope(method: str, path: str, root: str = "/v2/models/m") -> dict:
    return {"type": "http", "method": method, "path": root + path, "root_path": root,
            "headers": [(b"content-type", b"application/json"), (b"content-type", b"text/csv")],
            "query_string": b""}


def _call(app, scope) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_the_front_answers_infer_and_passes_the_rest_on():
    seen = []

    async def answer(headers, receive, version):
        assert headers["content-type"] == "application/json"  # the first of a repeated one
        seen.append(version)
        if version == "9":
            raise MaasError("version 9: not found", status=404, headers={"X-Why": "gone"})
        return b'{"ok":true}'

    async def fallback(scope, receive, send):
        seen.append(scope["path"])

    front = InferFront(answer, fallback)
    ok = _call(front, _scope("POST", "/infer"))
    assert ok[0]["status"] == 200 and ok[1]["body"] == b'{"ok":true}'
    assert (b"content-length", b"11") in ok[0]["headers"]
    missing = _call(front, _scope("POST", "/versions/9/infer"))
    assert missing[0]["status"] == 404 and (b"x-why", b"gone") in missing[0]["headers"]
    assert json.loads(missing[1]["body"]) == {"error": "version 9: not found"}
    _call(front, _scope("GET", "/infer"))
    assert seen == [None, "9", "/v2/models/m/infer"]


def test_only_infer_posts_skip_the_disconnect_watch():
    headers = []

    async def app(scope, receive, send):
        headers.append(DISCONNECT_OFF in scope["headers"])

    middleware = QuickInfer(app)
    for method, path in (("POST", "/infer"), ("POST", "/generate_stream"), ("GET", "/infer")):
        _call(middleware, _scope(method, path))
    assert headers == [True, False, False]


def test_the_cluster_environment_and_the_manifests_install_the_middleware():
    import importlib
    from pathlib import Path

    from maas.cluster import serve_env
    from maas.config import ClusterConfig

    from ray.serve._private import constants

    env = serve_env(ClusterConfig(haproxy_threads=2, haproxy_drain_s=1.5))
    module, _, name = env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
    (middleware,) = getattr(importlib.import_module(module), name)()
    assert middleware.cls is QuickInfer and env["RAY_SERVE_HAPROXY_NBTHREAD"] == "2"
    # Serve reads each of these by this name (an upgrade of Ray that renames one fails here).
    source = Path(constants.__file__).read_text()
    for variable in env:
        assert f'"{variable}"' in source, f"Serve no longer reads {variable}"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1.5"
    cluster = Path(__file__).resolve().parents[2] / "cluster"
    for manifest in ("raycluster.yaml", "rayservice.yaml", "cluster.yaml"):
        text = (cluster / manifest).read_text()
        for variable in ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH",
                         "RAY_SERVE_HAPROXY_METRICS_ENABLED", "RAY_SERVE_HAPROXY_NBTHREAD",
                         "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
                         "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"):
            assert variable in text, f"cluster/{manifest} does not set {variable}"


def test_a_lean_replica_keeps_pandas_out_through_rays_own_setup_hook_variable():
    """serve_apps.lean names Ray's setup-hook variable (an upgrade of Ray that renames it
    fails here), and its hook leaves Serve without pandas, which Serve treats as absent."""
    from ray._private import ray_constants

    from serve_apps.lean import WORKER_PROCESS_SETUP_HOOK_ENV, lean_runtime_env

    assert WORKER_PROCESS_SETUP_HOOK_ENV == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    hook = lean_runtime_env()["env_vars"][WORKER_PROCESS_SETUP_HOOK_ENV]
    module, function = hook.rsplit(".", 1)
    code = (f"import sys\nfrom {module} import {function}\n{function}()\n"
            "import ray.serve._private.utils as serve_utils\n"
            "print(serve_utils.pd is None, sys.modules['pandas'] is None)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == ["True", "True"]


def test_serve_tags_each_route_as_before_with_the_infer_routes_tried_first():
    from fastapi import FastAPI
    from ray.serve._private.thirdparty.get_asgi_route_name import (extract_route_patterns,
                                                                   get_asgi_route_name)

    from serve_apps.inference import api  # as Serve's ingress left it: routes in a router

    plain = FastAPI()  # and one with its routes at the top
    for method, path in (("get", "/"), ("get", "/versions/{version}"), ("post", "/infer"),
                         ("post", "/versions/{version}/infer")):
        getattr(plain, method)(path)(lambda: None)
    for app in (api, plain):
        front = InferFront(None, app)  # type: ignore[arg-type]
        assert [r.path for r in front.routes][:2] == ["/infer", "/versions/{version}/infer"]
        assert isinstance(front.routes[0], InferRouteTag)  # an infer request: a string test
        assert extract_route_patterns(front) == extract_route_patterns(app)
        for root in ("", "/v2/models/m"):
            for method, path in (
                    ("POST", "/infer"), ("POST", "/versions/3/infer"), ("GET", "/"),
                    ("GET", "/versions/3"), ("GET", "/infer"), ("POST", "/infer/"),
                    ("GET", "/versions/3/infer"), ("POST", "/versions//infer"),
                    ("POST", "/versions/a/b/infer"), ("PUT", "/versions/3/infer"),
                    ("GET", "/ready"), ("GET", "/versions/3/ready"), ("GET", "/docs"),
                    ("GET", "/openapi.json"), ("GET", "/docs/static/x.js")):
                scope = _scope(method, path, root=root)
                assert get_asgi_route_name(front, scope) == get_asgi_route_name(app, scope), \
                    (method, root, path)
    assert len(InferFront(None, api).routes) > 8  # the included router's routes, spliced in


def test_quiet_gc_spaces_out_young_collections_and_freezes_nothing():
    import gc

    from serve_apps.lean import GC_YOUNG_THRESHOLD, quiet_gc

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        quiet_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() == frozen  # a swapped-out version stays collectable
    finally:
        gc.set_threshold(*before)


def test_a_lean_replica_keeps_the_deploying_jobs_runtime_env_and_its_setup_hook():
    """Serve hands a deployment with its own runtime_env only the job's working_dir: the
    lean env starts from the job's whole one, and never replaces a hook the job set."""
    from serve_apps.lean import WORKER_PROCESS_SETUP_HOOK_ENV, made_lean

    job = {"working_dir": "gcs://x.zip", "env_vars": {"MAAS_MODEL_KEY": "k"}}
    env = made_lean(job)
    assert env["working_dir"] == "gcs://x.zip" and env["env_vars"]["MAAS_MODEL_KEY"] == "k"
    assert env["env_vars"]["MALLOC_ARENA_MAX"] == "2"
    assert WORKER_PROCESS_SETUP_HOOK_ENV in env["env_vars"]
    assert job["env_vars"] == {"MAAS_MODEL_KEY": "k"}  # the job's own dict is left alone
    theirs = made_lean({"env_vars": {WORKER_PROCESS_SETUP_HOOK_ENV: "theirs.hook"}})
    assert theirs["env_vars"][WORKER_PROCESS_SETUP_HOOK_ENV] == "theirs.hook"


def test_a_body_read_times_out_with_408_and_leaves_other_cancellations_alone():
    from serve_apps.http import read_capped

    async def drip():  # the first byte, then nothing more
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(30)

    async def whole():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    def read(receive, timeout_s):
        return read_capped({}, receive, 100, timeout_s, "serve.max_body_bytes", "fix")

    async def main():
        assert await read(whole, 0.05) == b"{}"
        await asyncio.sleep(0.1)  # the timer of a finished read never fires into anything
        with pytest.raises(MaasError) as refused:
            await asyncio.wait_for(read(drip, 0.05), timeout=5)
        assert refused.value.status == 408 and "1 bytes received" in refused.value.message
        sent.clear()
        other = asyncio.ensure_future(read(drip, 30))
        await asyncio.sleep(0.05)
        other.cancel()  # a disconnect or a shutdown: a cancellation, not a 408
        with pytest.raises(asyncio.CancelledError):
            await other
        assert asyncio.current_task().cancelling() == 0

    sent: list[int] = []
    asyncio.run(main())
