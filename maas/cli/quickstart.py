"""``maas quickstart``: a tenant with a key for every model, each model called once, and
curl commands that work.

    maas quickstart [--tenant demo]
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from maas.cli.common import (ConfigOption, access_store, console, deploy_config, fail, guarded,
                             who)
from maas.config import DeployConfig, ModelConfig
from maas.oip import InferenceRequest, InferenceResponse, row_request, text_request
from maas.routes import OIP_ROOT, chat_route, embeddings_route, infer_route

EXAMPLE_TEXT = "How do I reset my password?"
EXAMPLE_QUESTION = "What is the capital of France?"


def _is_chat(model: ModelConfig) -> bool:
    return model.pretrained is not None and model.pretrained.task == "chat"


def _chat_body(model: ModelConfig, stream: bool) -> dict:
    return {"model": model.name, "messages": [{"role": "user", "content": EXAMPLE_QUESTION}],
            "max_tokens": 32, "temperature": 0, "stream": stream}


def _ask_chat(cfg: DeployConfig, model: ModelConfig, key: str) -> str:
    """One chat completion with the new key: its answer."""
    import requests

    url = f"{cfg.cluster.base_url}{chat_route()}"
    try:
        reply = requests.post(url, json=_chat_body(model, False), timeout=60,
                              headers={"Authorization": f"Bearer {key}"})
    except requests.RequestException as exc:
        raise fail(f"{url}: {exc}; is the model served? `make demo` runs `maas run` first")
    if reply.status_code != 200:
        raise fail(f"{url} answered {reply.status_code}: {reply.text[:300]}")
    return reply.json()["choices"][0]["message"]["content"]


def _example_body(model: ModelConfig, base_dir: Path) -> InferenceRequest:
    """One held-out row of ``model``'s data (a sentence, for an embedder) as an OIP request."""
    from maas.data import load_splits

    if model.source == "pretrained":
        return text_request([EXAMPLE_TEXT])
    row = load_splits(model.data, model.train.task, base_dir).x_test[0].tolist()
    return row_request([round(v, 4) for v in row])


def _call_each(cfg: DeployConfig, key: str, base_dir: Path) -> None:
    """One request to every model with the new key; its first answer printed."""
    import requests

    for model in cfg.models:
        if _is_chat(model):
            console.print(f"  {model.name}: {_ask_chat(cfg, model, key)!r}", highlight=False)
            continue
        url = f"{cfg.cluster.base_url}{infer_route(model.name)}"
        body = _example_body(model, base_dir).model_dump(exclude_none=True)
        try:
            reply = requests.post(url, json=body, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"})
        except requests.RequestException as exc:
            raise fail(f"{url}: {exc}; is the model served? `make demo` runs `maas run` first")
        if reply.status_code != 200:
            raise fail(f"{url} answered {reply.status_code}: {reply.text[:300]}")
        outputs = InferenceResponse.model_validate(reply.json()).outputs
        answer = outputs[0] if model.source == "pretrained" else outputs[-1]  # embedding; label
        console.print(f"  {model.name}: {answer.name} {answer.data[:4]}", highlight=False)


def _print_curls(cfg: DeployConfig, base_dir: Path) -> None:
    root, auth = cfg.cluster.base_url, '-H "Authorization: Bearer $MAAS_API_KEY"'
    first = cfg.models[0]
    data = _example_body(first, base_dir).model_dump_json(exclude_none=True)
    console.print("Try it:", highlight=False)
    lines = [f"curl -s -X POST {root}{infer_route(first.name)} {auth} "
             f"-H 'Content-Type: application/json' -d {shlex.quote(data)}",
             f"curl -s {root}{OIP_ROOT}/catalog {auth}"]
    for model in (m for m in cfg.models if m.source == "pretrained" and not _is_chat(m)):
        data = json.dumps({"model": model.name, "input": [EXAMPLE_TEXT]})
        lines.append(f"curl -s -X POST {root}{embeddings_route()} {auth} "
                     f"-H 'Content-Type: application/json' -d {shlex.quote(data)}")
    for model in (m for m in cfg.models if _is_chat(m)):  # streamed: -N shows tokens as they come
        data = json.dumps(_chat_body(model, True))
        lines.append(f"curl -sN -X POST {root}{chat_route()} {auth} "
                     f"-H 'Content-Type: application/json' -d {shlex.quote(data)}")
    for line in lines:
        console.print(f"  {line}", markup=False, highlight=False)


def quickstart(tenant: str = typer.Option("demo", "--tenant", "-t"),
               config: Path = ConfigOption) -> None:
    """Onboard TENANT: a key for every model, their agreements accepted, each model called
    once with the key; prints the key and a curl command that works."""
    from maas.access import onboard

    cfg = deploy_config(config)
    if not cfg.access.enabled:
        raise fail("access.enabled is false in deploy.yaml: every route is open, no key needed")
    store = access_store(cfg)
    key, record, accepted = guarded(lambda: onboard(store, list(cfg.models), tenant,
                                                    f"{who()} (maas quickstart)"))
    console.print(f"tenant {tenant}: key {record.public()['prefix']}... for "
                  f"{', '.join(record.models)}", highlight=False)
    for a in accepted:
        console.print(f"  accepted {a.model}'s agreement version {a.version}", highlight=False)
    _call_each(cfg, key, config.resolve().parent)
    console.print(f"\nYour key (shown only now):\n  export MAAS_API_KEY={key}", markup=False,
                  highlight=False)
    _print_curls(cfg, config.resolve().parent)
    console.print(f"\nConsole: {cfg.cluster.base_url}/  (sign in with the key above)",
                  highlight=False)
