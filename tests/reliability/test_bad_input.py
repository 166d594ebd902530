"""Bad input against a served model: every case answered with a 4xx whose message names the
problem, over and over, with the replica's and the proxy's memory measured; slow-drip bodies
cut off with 408 while other clients are served."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from maas.config import ModelConfig
from serve_apps.deploy import deploy_model, wait_for_version
from maas.routes import SERVER_APP, model_app_name
from tests.conftest import delete_apps, register_versions
from tests.reliability.conftest import rss_growth, serve_rss_mb

pytestmark = pytest.mark.reliability
NAME = "picky"
APP = model_app_name(NAME)
COMMAND = "make test-reliability"
ROUNDS = 20  # after one warm-up round; memory must not grow with them
BODY_TIMEOUT_S = 2.0


def _tensor(**fields) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": [0.0] * 64} | fields]}


def _nested(depth: int) -> bytes:
    data = b"[" * depth + b"0" + b"]" * depth
    return b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ' \
           + data + b"}]}"


JSON = {"Content-Type": "application/json"}
# (what it is, requests.post keyword arguments, status, a fragment of the error message)
CASES = [
    ("wrong shape", dict(json=_tensor(shape=[1, 3], data=[1, 2, 3])), 400, "inputs[0].shape[1]"),
    ("shape and data disagree", dict(json=_tensor(shape=[2, 64])), 400, "inputs[0]"),
    ("negative shape", dict(json=_tensor(shape=[-1, 64])), 400, "inputs[0].shape"),
    ("huge shape", dict(json=_tensor(shape=[2**62, 2**62])), 400, "inputs[0].shape"),
    ("too many rows", dict(json=_tensor(shape=[2000, 64], data=[0])), 400,
     "inputs[0].shape[0]: at most 1024 rows"),
    ("wrong datatype", dict(json=_tensor(datatype="INT8")), 400, "inputs[0].datatype"),
    ("unknown datatype", dict(json=_tensor(datatype="FP128")), 400, "inputs[0].datatype"),
    ("strings as FP32", dict(json=_tensor(data=["a"] * 64)), 400, "inputs[0].data"),
    ("NaN", dict(data=b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", '
                      b'"data": [NaN' + b", 0" * 63 + b"]}]}", headers=JSON), 400, "NaN"),
    ("infinity", dict(data=b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": '
                           b'"FP32", "data": [Infinity' + b", 0" * 63 + b"]}]}", headers=JSON),
     400, "NaN"),
    ("overflows FP32", dict(json=_tensor(data=[1e39] + [0.0] * 63)), 400, "NaN and infinity"),
    ("unknown input", dict(json=_tensor(name="pixels")), 400, "unknown input 'pixels'"),
    ("missing data", dict(json={"inputs": [{"name": "input", "shape": [1, 64],
                                             "datatype": "FP32"}]}), 400, "inputs[0].data"),
    ("no inputs", dict(json={"inputs": []}), 400, "inputs: List should have at least 1 item"),
    ("unknown field", dict(json=_tensor(extra=1)), 400, "inputs[0].extra"),
    ("unknown output", dict(json=_tensor() | {"outputs": [{"name": "logits"}]}), 400,
     "outputs: unknown output(s) ['logits']"),
    ("empty body", dict(data=b""), 400, "body: empty"),
    ("not JSON", dict(data=b"{not json", headers=JSON), 400, "not valid JSON"),
    ("JSON array", dict(data=b"[1, 2]"), 400, "body: must be a JSON object"),
    ("invalid UTF-8", dict(data=b'{"inputs": "\xff\xfe"}', headers=JSON), 400, "not valid JSON"),
    ("100,000 open brackets", dict(data=b"[" * 100_000), 400, "not valid JSON"),
    ("data nested 10,000 deep", dict(data=_nested(10_000), headers=JSON), 400, "body"),
    ("form content type", dict(data=b'{"inputs": []}', headers={
        "Content-Type": "application/x-www-form-urlencoded"}), 415,
     "Content-Type: application/json"),
    ("body over the limit", dict(data=b"x" * (2**20 + 10)), 413, "serve.max_body_bytes"),
]


@pytest.fixture(scope="module")
def picky(deploy_cfg, tmp_path_factory):

    register_versions(deploy_cfg, NAME, [0], tmp_path_factory.mktemp("picky"))
    model = ModelConfig(name=NAME, serve={"cpus_per_replica": 0.2, "max_body_bytes": 2**20,
                                          "body_timeout_s": BODY_TIMEOUT_S})
    url = deploy_model(deploy_cfg, model)
    wait_for_version(deploy_cfg, model, 1)
    yield url
    delete_apps(APP, SERVER_APP)


def _answer_if_wrong(url: str, session: requests.Session, case: tuple) -> str | None:
    """None when ``case`` got its status and a message naming the problem; else what came."""
    label, send, status, fragment = case
    reply = session.post(url, timeout=30, **send)
    try:
        message = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = None
    if reply.status_code != status or message is None or fragment not in message:
        return f"{label}: {reply.status_code} {reply.text[:200]}"
    return None


def _wrong(url: str, session: requests.Session) -> list[str]:
    """Each case sent once: the ones not answered as expected."""
    return [w for case in CASES if (w := _answer_if_wrong(url, session, case)) is not None]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_each_bad_input_gets_its_4xx_naming_the_problem(picky, case):
    with requests.Session() as session:
        assert _answer_if_wrong(picky, session, case) is None


def test_bad_input_over_and_over_leaves_memory_and_serving_as_they_were(picky, figures):
    with requests.Session() as session:
        _wrong(picky, session)  # warm-up: first-use allocations are not growth
        before = serve_rss_mb(APP)
        wrong = [w for _ in range(ROUNDS) for w in _wrong(picky, session)]
        after = serve_rss_mb(APP)
        ok = session.post(picky, json=_tensor(), timeout=30)
    growth = rss_growth(after, before)
    figures.append({"test": "bad input", "fault": f"{len(CASES)} kinds of bad request "
                                                  f"(shapes, dtypes, NaN/inf, empty, nested, "
                                                  f"invalid UTF-8, content type, 1 MB+), "
                                                  f"{ROUNDS} rounds",
                    "load": f"one client; RSS growth MB {growth}",
                    "sent": ROUNDS * len(CASES), "failed": len(wrong), "retries": 0,
                    "recovery_s": 0.0, "command": COMMAND})
    assert not wrong, wrong[:5]
    assert ok.status_code == 200, ok.text
    assert all(mb < 30 for mb in growth.values()), growth


def _drip(url: str, declared: int, outcome: dict) -> None:
    """A client that declares ``declared`` bytes and sends one every 0.25 s."""
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{"
                     .encode())
        sock.settimeout(0.25)
        reply = b""
        for _ in range(declared - 1):
            try:
                reply += sock.recv(65536)
            except TimeoutError:
                pass
            if b"\r\n\r\n" in reply:
                break
            try:
                sock.sendall(b" ")
            except OSError:  # the server closed its side after answering
                break
        seconds = time.monotonic() - started
        sock.settimeout(10)
        while not _whole(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    outcome["status"] = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None
    outcome["body"] = reply.partition(b"\r\n\r\n")[2]
    outcome["seconds"] = seconds


def _whole(reply: bytes) -> bool:
    """Whether ``reply`` holds a response's headers and all the body they declare."""
    head, found, body = reply.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def test_slow_drip_bodies_get_408_while_others_are_served(picky, figures):
    drips = [{} for _ in range(4)]
    threads = [threading.Thread(target=_drip, args=(picky, 400, o)) for o in drips]
    for thread in threads:
        thread.start()
    served = []
    with requests.Session() as session, ThreadPoolExecutor(2) as pool:
        while any(t.is_alive() for t in threads):
            served.append(pool.submit(session.post, picky, json=_tensor(), timeout=30))
            time.sleep(0.1)
        statuses = [f.result().status_code for f in served]
    for thread in threads:
        thread.join(timeout=60)
    timed_out = [o for o in drips if o.get("status") == 408 and b"serve.body_timeout_s" in
                 o.get("body", b"")]
    slowest = max(o.get("seconds", float("inf")) for o in drips)
    figures.append({"test": "slow-drip bodies", "fault": "4 clients send 1 byte per 0.25 s of a "
                                                         "400-byte body",
                    "load": f"a good request every 0.1 s beside them ({len(statuses)} sent); "
                            f"serve.body_timeout_s {BODY_TIMEOUT_S:g}",
                    "sent": len(drips) + len(statuses),
                    "failed": len(drips) - len(timed_out) + sum(s != 200 for s in statuses),
                    "retries": 0, "recovery_s": slowest, "command": COMMAND})
    assert len(timed_out) == len(drips), drips
    assert slowest < BODY_TIMEOUT_S + 10, drips
    assert statuses and all(s == 200 for s in statuses), statuses
