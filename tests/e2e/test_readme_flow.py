"""The README's commands, run as a user runs them: maas up -> ray job submit (the digits MLP
alone) -> maas run deploy.yaml -> maas quickstart -> curl with the key -> maas models / usage /
catalog -> maas down.

HOME points at a temporary folder, so the Ray token (~/.ray/auth_token) and the maas state
(~/.maas) of this run never touch the real home. Needs ports 6379, 8000 and 8265 free.
"""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from maas.cluster import ray_processes

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def _wait_for_no_ray(timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while (left := ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict:
    left = _wait_for_no_ray(30)
    if left:
        pytest.fail(f"Ray is already running here ({left[:3]}); run `maas down` first: this "
                    f"test starts and stops the local head on the default ports")
    home = tmp_path_factory.mktemp("home")
    # As after `source .venv/bin/activate` and `export RAY_AUTH_MODE=token` (README).
    env = os.environ | {"HOME": str(home), "RAY_AUTH_MODE": "token",
                        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)  # the README user's token is ~/.ray/auth_token
    yield env
    subprocess.run(["maas", "down"], env=env, cwd=REPO, capture_output=True, timeout=120)


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-4000:]}"
    return done


def _models(env: dict, *args: str) -> object:
    """``maas models ... --json`` with deploy.yaml's registry (the one under $HOME/.maas)."""
    return json.loads(_run(["maas", "models", *args, "--json"], env, timeout=120).stdout)


def _readme_curl(path: str = "/v2/models/digits/infer") -> tuple[str, str]:
    """The README's keyed curl example for ``path``: (url, body)."""
    readme = (REPO / "README.md").read_text()
    examples = re.findall(r"curl -s -X POST (\S+) -H \"Authorization: Bearer \$MAAS_API_KEY\" "
                          r"\\\n\s*-H 'Content-Type: application/json' \\\n\s*-d '([^']+)'",
                          readme)
    found = [(url, body) for url, body in examples if url.endswith(path)]
    assert found, f"README lost its curl example for {path}"
    return found[0]


def _check_console(demo: str, key: str) -> None:
    """The console URL quickstart printed, in Chromium: signed in with quickstart's key, the
    catalog shows a card for every model of deploy.yaml."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.browser import screenshot_dir, start_browser

    site = re.search(r"^Console: (\S+)", demo, re.MULTILINE).group(1)
    driver = start_browser()
    try:
        driver.get(site)
        deadline = time.monotonic() + 30
        while not driver.find_elements(By.ID, "key") and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.find_element(By.ID, "key").send_keys(key + "\n")
        names = []
        while len(names) < 4 and time.monotonic() < deadline + 30:
            time.sleep(0.3)
            names = [c.get_attribute("data-model")
                     for c in driver.find_elements(By.CSS_SELECTOR, "article.card")]
        assert names == ["digits", "digits-cnn", "minilm", "smollm2"], driver.page_source[-3000:]
        driver.save_screenshot(str(screenshot_dir() / "demo-catalog.png"))
        # The shipped digits model reads the 7 sample as a 7, and the heatmap says why.
        driver.find_element(By.CSS_SELECTOR, "#nav button[data-page='playground']").click()
        time.sleep(0.5)
        driver.find_element(By.CSS_SELECTOR, "button[data-sample='7']").click()
        driver.find_element(By.ID, "pg-run").click()
        while not driver.find_elements(By.CSS_SELECTOR, ".heat .cell") and \
                time.monotonic() < deadline + 60:
            time.sleep(0.2)
        assert "Predicted 7" in driver.find_element(By.ID, "pg-answer").text
        driver.save_screenshot(str(screenshot_dir() / "demo-playground.png"))
        # The embedder's panel: a kitten is nearer a cat than the stock market is.
        Select(driver.find_element(By.ID, "pg-model")).select_by_value("minilm")
        driver.find_element(By.ID, "pg-run").click()
        while len(driver.find_elements(By.CSS_SELECTOR, ".similarity td")) < 9 and \
                time.monotonic() < deadline + 90:
            time.sleep(0.2)
        cells = [float(td.text) for td in driver.find_elements(By.CSS_SELECTOR, ".similarity td")]
        assert len(cells) == 9 and cells[0] == 1.0 and cells[1] > cells[2] + 0.2, cells
        # The chat model's panel: streamed, with its token usage at the end.
        Select(driver.find_element(By.ID, "pg-model")).select_by_value("smollm2")
        driver.find_element(By.ID, "pg-run").click()
        while "completion tokens" not in driver.find_element(By.ID, "playground").text and \
                time.monotonic() < deadline + 150:
            time.sleep(0.2)
        assert "Paris" in driver.find_element(By.ID, "pg-answer").text
        assert "completion tokens" in driver.find_element(By.ID, "playground").text
        driver.save_screenshot(str(screenshot_dir() / "demo-chat.png"))
    finally:
        driver.quit()


def _summary(output: str) -> dict:
    """The pipeline's --json summary: the one line of JSON in ``output``."""
    lines = [line for line in output.splitlines() if line.startswith('{"run"')]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0])


def _digits_only(folder: Path) -> Path:
    """deploy.yaml with its digits MLP alone (no optimize variants, no fine-tuning), written
    to ``folder``."""
    doc = yaml.safe_load((REPO / "deploy.yaml").read_text())
    (digits,) = [m for m in doc["models"] if m["name"] == "digits"]
    doc["models"] = [digits | {"optimize": digits["optimize"] | {"variants": []}}]
    doc.pop("fine_tuning")  # it names the chat model, which this file leaves out
    path = folder / "digits.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _trained_accuracy(model: dict) -> float:
    """Held-out accuracy of the trained model (the fp32 variant's, when variants ran)."""
    fp32 = [v["metrics"]["accuracy"] for v in model["variants"] if v["name"] == "fp32"]
    return fp32[0] if fp32 else model["held_out"]["held_out_accuracy"]


def _check_quiet_run(run: subprocess.CompletedProcess) -> None:
    """`maas run --json` shows stage lines and a progress bar per training run on stderr and
    the summary on stdout, in at most 60 lines; Ray's and the libraries' logs go to the log
    file it names."""
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) <= 60, f"{len(lines)} lines:\n" + "\n".join(lines)
    for model, epochs in (("digits", 20), ("digits-cnn", 15)):
        bars = [line for line in lines if re.search(
            rf"\[1/4\] train {model} .*\d+/{epochs} epochs .*samples/s", line)]
        assert len(bars) == 1, "\n".join(lines)
    assert not [line for line in lines if "pid=" in line or " INFO " in line], "\n".join(lines)
    log = Path(re.search(r"other output in (\S+)", run.stderr).group(1))
    assert log.parent.name == "logs" and "Connecting to existing Ray cluster" in log.read_text()


def _check_the_network_sees_no_tenant() -> None:
    """From this machine's own non-loopback address, as another machine would, after the
    demo's traffic: of `maas up`'s Ray only the replicas' inter-deployment gRPC ports are
    reachable (Serve binds them to every interface, with no setting), and they refuse a call
    without the Ray token; everything else of Ray stays on loopback (maas.cluster.LOOPBACK_ENV).
    Serve's HAProxy stats and Prometheus ports (bound likewise) answer, naming no tenant."""
    from tests.exposure import from_the_network, machine_ip, open_to_anyone

    here = machine_ip()
    assert here, "no non-loopback address on this machine to try from"
    network = from_the_network(here, tenants=["demo"])
    assert not any(a.tenant_data for a in network), network
    assert {a.title for a in open_to_anyone(network)} <= {"haproxy"}, network
    assert all(a.title == "haproxy" or a.grpc == "UNAUTHENTICATED" for a in network), network
    assert any(a.grpc for a in network), network  # the replicas' ports were tried


def _check_one_server_document() -> None:
    """GET /openapi.json lists the model, server and /v1 routes; /docs renders (its script is
    served locally); GET / points to them (HAProxy ingress, as `maas up` runs it)."""
    base = "http://127.0.0.1:8000"
    paths = set(requests.get(f"{base}/openapi.json", timeout=30).json()["paths"])
    assert {"/v2/health/ready", "/v2/catalog", "/v2/models/digits/infer",
            "/v2/models/digits-cnn/infer", "/v2/models/minilm/infer", "/v1/embeddings",
            "/v1/chat/completions", "/v2/models/smollm2/generate_stream"} <= paths
    page = requests.get(f"{base}/docs", timeout=30)
    script = re.search(r"src=['\"]([^'\"]+swagger-ui-bundle\.js)['\"]", page.text).group(1)
    assert requests.get(f"{base}{script}", timeout=30).status_code == 200
    assert requests.get(f"{base}/", timeout=30).json()["docs"] == "/docs"


def _check_chat(demo: str, key: str, env: dict) -> None:
    """Through HAProxy: quickstart's streamed chat curl, the README's `openai` example, and a
    stream closed early, whose generation leaves the engine's batch within a second."""
    env = env | {"MAAS_API_KEY": key}
    curl = next(line.strip() for line in demo.splitlines() if "curl -sN" in line)
    streamed = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True,
                              timeout=120).stdout
    events = [line[len("data: "):] for line in streamed.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 5, streamed
    text = "".join(c["delta"].get("content") or "" for e in events[:-1]
                   for c in json.loads(e)["choices"])
    assert "Paris" in text, streamed
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    ran = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True,
                         text=True, timeout=120)
    assert "Paris" in ran.stdout and "completion_tokens=" in ran.stdout, ran.stdout + ran.stderr
    headers = {"Authorization": f"Bearer {key}"}
    engine = "http://127.0.0.1:8000/v2/models/smollm2/engine"
    body = {"model": "smollm2", "stream": True, "max_tokens": 1000, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to one thousand."}]}
    with requests.post("http://127.0.0.1:8000/v1/chat/completions", json=body, headers=headers,
                       stream=True, timeout=60) as reply:
        lines = reply.iter_lines()
        for _ in range(6):
            next(lines)
        assert requests.get(engine, headers=headers, timeout=10).json()["running"] == 1
    closed = time.monotonic()
    while requests.get(engine, headers=headers, timeout=10).json()["running"]:
        assert time.monotonic() - closed < 1.0, "the closed stream still generates"
        time.sleep(0.02)


def test_up_submit_serve_status_down(user_env):
    _run(["maas", "up"], user_env, timeout=180)
    assert (Path(user_env["HOME"]) / ".ray" / "auth_token").is_file()
    # Token auth is on: a request without the token is refused.
    assert requests.get("http://127.0.0.1:8265/api/jobs/", timeout=10).status_code == 401

    # The README's `ray job submit`, with a deploy file of the digits MLP alone (deploy.yaml's,
    # without optimize variants): the job path is the same for any file, and the whole
    # deploy.yaml runs next through `maas run`, as `make demo` runs it.
    digits_only = _digits_only(Path(user_env["HOME"]))
    job = _run(["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir",
                ".", "--", "python", "-m", "jobs.pipeline", str(digits_only), "--json",
                "--verbose"], user_env, timeout=900)
    assert "succeeded" in job.stdout + job.stderr
    # --verbose: Ray's worker logs reach the job's log; --json: the summary is one JSON line.
    assert re.search(r"\((RayTrainWorker|TrainController) pid=\d+", job.stdout), job.stdout[-3000:]
    (trained,) = _summary(job.stdout)["models"]
    assert trained["name"] == "digits" and _trained_accuracy(trained) >= 0.95, trained

    # Access is on: no key, no answer (health stays open).
    url, body = _readme_curl()
    assert requests.post(url, data=body, timeout=30).status_code == 401
    assert requests.get("http://127.0.0.1:8000/v2/health/ready", timeout=30).status_code == 200
    (digits,) = _models(user_env, "show", "digits")["versions"]
    assert digits["variant"] == "fp32" and digits["aliases"] == ["production"]
    assert len(digits["sha256"]) == 64
    status = _run(["maas", "status"], user_env, timeout=120).stdout
    assert "model-digits" in status and "RUNNING" in status
    assert "http://127.0.0.1:8000/v2/models/digits" in status
    assert "SUCCEEDED" in status

    # `make demo`'s pipeline (`maas run deploy.yaml`, with --json) on the running head: a
    # second version of digits, the first of the others.
    run = _run(["maas", "run", "deploy.yaml", "--json"], user_env, timeout=900)
    _check_quiet_run(run)
    models = {m["name"]: m for m in _summary(run.stdout)["models"]}
    # The shipped deploy.yaml: an MLP and a CNN on digits, each trained in under 3 minutes,
    # the pretrained all-MiniLM-L6-v2 exported, checked and served as int8, and SmolLM2 built,
    # measured and served as int4.
    assert set(models) == {"digits", "digits-cnn", "minilm", "smollm2"}
    assert models["smollm2"]["variant"] == "int4" and "Paris" in models["smollm2"]["served_answer"]
    assert _trained_accuracy(models["digits"]) >= 0.95, models["digits"]
    assert _trained_accuracy(models["digits-cnn"]) >= 0.97, models["digits-cnn"]
    assert all(models[m]["stage_seconds"]["train"] <= 180 for m in ("digits", "digits-cnn"))
    # deploy.yaml asks for every optimize variant: all are measured, one is registered.
    variants = models["digits"]["variants"]
    assert {"fp32", "int8_dynamic", "int8_static", "prune_l1", "prune_structured",
            "distill"} == {v["name"] for v in variants}
    (selected,) = [v["name"] for v in variants if v["selected"]]
    assert models["minilm"]["variant"] == "int8_dynamic"
    assert models["minilm"]["served_answer"] >= 0.99  # served embedding vs sentence-transformers
    # Version 2 takes production when within promotion.max_regression of version 1.
    served = 2 if models["digits"]["promoted"] else 1
    assert models["digits"]["served_version"] == served, models["digits"]["promotion"]
    digits = _models(user_env, "show", "digits")["versions"]
    assert [(v["variant"], "production" in v["aliases"]) for v in digits] == [
        ("fp32", served == 1), (selected, served == 2)]
    (minilm,) = _models(user_env, "show", "minilm")["versions"]
    assert minilm["variant"] == "int8_dynamic" and minilm["aliases"] == ["production"]
    _check_one_server_document()
    demo = _run(["maas", "quickstart"], user_env, timeout=300).stdout
    key = re.search(r"export MAAS_API_KEY=(maas_\S+)", demo).group(1)
    curl = next(line.strip() for line in demo.splitlines() if line.strip().startswith("curl -s -X"))
    printed = subprocess.run(["bash", "-c", curl], env=user_env | {"MAAS_API_KEY": key},
                             capture_output=True, text=True, timeout=60)
    assert json.loads(printed.stdout)["model_name"] == "digits", printed.stdout + printed.stderr
    # The README's curl example, verbatim, with that key: the first digits image, a 0.
    reply = requests.post(url, data=body, timeout=30, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    label = next(o for o in reply.json()["outputs"] if o["name"] == "label")
    assert reply.json()["model_name"] == "digits" and label["data"] == [0]
    # The README's embeddings example (OpenAI's request and answer), with that key.
    url, body = _readme_curl("/v1/embeddings")
    reply = requests.post(url, data=body, timeout=60, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["model"] == "minilm@1" and answer["usage"]["prompt_tokens"] > 0
    assert [len(d["embedding"]) for d in answer["data"]] == [384] * len(json.loads(body)["input"])
    _check_chat(demo, key, user_env)
    _check_console(demo, key)
    _check_the_network_sees_no_tenant()
    cards = json.loads(_run(["maas", "catalog", "--tenant", "demo", "--json"], user_env,
                            timeout=120).stdout)
    assert [c["name"] for c in cards] == ["digits", "digits-cnn", "minilm", "smollm2"]
    assert cards[2]["kind"] == "text-embedding" and cards[2]["embeddings_url"] == "/v1/embeddings"
    assert cards[3]["kind"] == "llm" and cards[3]["chat_url"] == "/v1/chat/completions"
    assert cards[3]["context_length"] == 8192 and cards[3]["price"]["per_1k_output_tokens"]
    assert all(c["agreement"]["version"] == 1 and c["production_version"] for c in cards)

    def used() -> Counter:
        """Requests per (tenant, model, status), summed over the versions that served them."""
        rows = json.loads(_run(["maas", "usage", "--json"], user_env, timeout=120).stdout)
        return sum((Counter({(r["tenant"], r["model"], r["status"]): r["requests"]})
                    for r in rows), Counter())

    deadline = time.monotonic() + 30  # replicas write usage every access.usage_flush_s
    while used().get(("demo", "digits", 200)) != 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    counts = used()
    # quickstart, its curl, the README's, the console's playground (and its explanation)
    assert counts[("demo", "digits", 200)] == 4, counts
    assert counts[("demo", "digits/explain", 200)] == 1, counts
    assert counts[("demo", "digits-cnn", 200)] == 1, counts
    # quickstart, the README's example and the console's
    assert counts[("demo", "minilm", 200)] == 3, counts
    # quickstart, its streamed curl, the README's python, the console's; the closed stream: 499
    assert counts[("demo", "smollm2", 200)] == 4 and counts[("demo", "smollm2", 499)] == 1, counts
    billed = [r for r in json.loads(_run(["maas", "usage", "--json"], user_env,
                                         timeout=120).stdout) if r["model"] == "smollm2"]
    assert all(r["prompt_tokens"] > 0 and r["cost"] > 0 for r in billed), billed
    assert counts[("maas-pipeline", "minilm", 200)] == 1, counts  # one smoke request per run
    assert counts[("maas-pipeline", "digits", 200)] == 2, counts
    assert counts[("-", "digits", 401)] == 1, counts
    listed = {m["name"]: m for m in _models(user_env, "list")}
    assert {name: m["versions"] for name, m in listed.items()} == {"digits": 2, "digits-cnn": 1,
                                                                   "minilm": 1, "smollm2": 1}
    versions = _models(user_env, "show", "digits")["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["source_run"] != versions[1]["source_run"]
    assert _models(user_env, "promote", "digits", "1")["version"] == 1
    assert _models(user_env, "promote", "digits", "2")["previous"] == 1
    assert _models(user_env, "promote", "digits", "1", "--alias", "canary")["alias"] == "canary"
    assert _models(user_env, "rollback", "digits") == {"name": "digits", "alias": "production",
                                                        "from": 2, "to": 1}
    aliases = {v["version"]: v["aliases"] for v in _models(user_env, "show", "digits")["versions"]}
    assert aliases == {1: ["canary", "production"], 2: []}

    down = _run(["maas", "down"], user_env, timeout=180)
    assert "no Ray processes left" in down.stdout
    assert ray_processes() == []
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:8000/v2/health/ready", timeout=5)
