"""deploy.yaml schema: the shipped file is valid, and every mistake is named by its key path."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from maas.cli import app
from maas.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def test_shipped_deploy_yaml_is_valid():
    cfg = load_config(REPO / "deploy.yaml")
    assert [m.name for m in cfg.models] == ["digits", "digits-cnn", "minilm", "smollm2"]
    assert [m.source for m in cfg.models] == ["train", "train", "pretrained", "pretrained"]
    assert [m.pretrained.task for m in cfg.models[2:]] == ["embeddings", "chat"]
    assert [m.model.kind for m in cfg.models[:2]] == ["mlp", "cnn"]
    assert cfg.models[0].train.workers == 2
    assert cfg.tracking_uri.startswith("sqlite:///")
    assert cfg.tracking_uri.endswith("/mlflow.db")


def test_defaults_fill_every_section():
    cfg = parse_config({"models": [{"name": "m"}]})
    assert cfg.cluster.http_port == 8000
    assert cfg.models[0].serve.num_replicas == 1
    assert cfg.models[0].data.source == "sklearn:digits"


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"models": [{"name": "m", "trian": {}}]},
         "models[0].trian: unknown key; allowed keys here: name, data, model, train"),
        ({"models": [{"name": "m", "train": {"epochs": "many"}}]},
         "models[0].train.epochs: must be a valid integer"),
        ({"models": [{"name": "m", "serve": {"num_replicas": 0}}]},
         "models[0].serve.num_replicas: must be greater than or equal to 1, got 0"),
        ({"models": [{"name": "m", "model": {"kind": "transformer"}}]},
         "models[0].model.kind: must be 'mlp' or 'cnn', got 'transformer'"),
        ({"models": [{"name": "Digits Model"}]}, "models[0].name: must be 1-63 lowercase"),
        ({"models": [{"name": "m", "model": {"hidden": [64, 0]}}]},
         "models[0].model.hidden: every hidden width must be >= 1"),
        ({"models": []}, "models: List should have at least 1 item"),
        ({"clusterr": {}, "models": [{"name": "m"}]}, "clusterr: unknown key"),
        ({"cluster": {"http_port": 70000}, "models": [{"name": "m"}]},
         "cluster.http_port: must be less than or equal to 65535, got 70000"),
        ({}, "models: required key is missing"),
        ([1, 2], "(top level): expected a mapping"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "name 'm' appears twice"),
        ({"registry": {"key_env": "my key"}, "models": [{"name": "m"}]},
         "registry.key_env: must be the name of an environment variable"),
        ({"registry": {"encrypt": "maybe"}, "models": [{"name": "m"}]},
         "registry.encrypt: must be a valid boolean"),
        ({"models": [{"name": "m", "promotion": {"policy": "always"}}]},
         "models[0].promotion.policy: must be 'auto' or 'manual', got 'always'"),
        ({"models": [{"name": "m", "train": {"loss": "mse"}, "promotion": {"min_accuracy": 0.9}}]},
         "promotion.min_accuracy: accuracy needs train.loss: cross_entropy"),
        ({"models": [{"name": "m", "source": "pretrained"}]},
         "pretrained: required with source: pretrained"),
        ({"models": [{"name": "m", "source": "hub"}]},
         "models[0].source: must be 'train' or 'pretrained', got 'hub'"),
        ({"models": [{"name": "m", "pretrained": {"model": "x"}}]},
         "pretrained: only used with source: pretrained"),
        ({"models": [{"name": "m", "source": "pretrained", "pretrained": {"model": "x"},
                      "train": {"epochs": 3}, "data": {"seed": 1}}]},
         "data, train: not used with source: pretrained"),
        ({"models": [{"name": "m", "source": "pretrained", "pretrained": {"model": "x"},
                      "optimize": {"variants": ["int8_dynamic", "distill"]}}]},
         "optimize.variants: ['distill'] cannot be built with source: pretrained (an embedder)"),
        ({"models": [{"name": "m", "source": "pretrained",
                      "pretrained": {"model": "x", "min_cosine": 1.5}}]},
         "models[0].pretrained.min_cosine: must be less than or equal to 1"),
        ({"models": [{"name": "m", "source": "pretrained", "pretrained": {"model": "x"},
                      "promotion": {"min_accuracy": 0.9}}]},
         "its promotion check is pretrained.min_cosine"),
    ],
)
def test_each_mistake_names_its_key_path(doc, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    return path


def test_three_mistakes_are_all_reported(tmp_path):
    doc = yaml.safe_load((REPO / "deploy.yaml").read_text())
    doc["models"][0]["train"]["learning_rate"] = 0.1     # unknown key
    doc["models"][0]["train"]["batch_size"] = "large"    # wrong type
    doc["models"][0]["data"]["test_fraction"] = 1.5      # out of range
    path = _write(tmp_path, yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 3, text
    assert "models[0].train.learning_rate: unknown key" in text
    assert "models[0].train.batch_size: must be a valid integer" in text and "'large'" in text
    assert "models[0].data.test_fraction: must be less than 0.9, got 1.5" in text


def test_maas_validate_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(REPO / "deploy.yaml")])
    assert ok.exit_code == 0 and "OK" in ok.output

    bad = _write(tmp_path, "models:\n  - name: m\n    trian: {}\n    train:\n      epochs: x\n"
                           "    serve:\n      num_replicas: -1\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    for path in ("models[0].trian", "models[0].train.epochs", "models[0].serve.num_replicas"):
        assert path in result.output


@pytest.mark.parametrize("text, expected", [
    ("models: [\n", "not valid YAML at line"),
    ("", "(top level): expected a mapping"),
])
def test_unparseable_files(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert expected in info.value.problems[0]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml")


def test_state_dir_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_config({"models": [{"name": "m"}]})
    assert cfg.state_path == tmp_path / ".maas"
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / '.maas' / 'mlflow.db'}"


def test_the_llm_cache_is_the_environments_then_cache_dir_then_under_state_dir(monkeypatch,
                                                                               tmp_path):
    monkeypatch.delenv("MAAS_CACHE_DIR", raising=False)
    doc = {"state_dir": str(tmp_path / "state"), "models": [{"name": "m"}]}
    assert parse_config(doc).cache_path == tmp_path / "state" / "cache"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config(doc | {"cache_dir": "~/shared"}).cache_path == tmp_path / "shared"
    monkeypatch.setenv("MAAS_CACHE_DIR", str(tmp_path / "env"))
    assert parse_config(doc | {"cache_dir": "~/shared"}).cache_path == tmp_path / "env"
    with pytest.raises(ConfigError, match="cache_dir"):
        parse_config(doc | {"cache_dir": ""})


def test_autoscaling_goes_to_serve_as_serve_reads_it():
    """Every autoscaling field is one of Ray Serve's, passed as given (look_back_period_s
    included: its 30 s default is what a scale-down waits for after a burst)."""
    from ray.serve.config import AutoscalingConfig as ServeAutoscaling

    serve = parse_config({"models": [{"name": "m", "serve": {"autoscaling": {
        "min_replicas": 1, "max_replicas": 3, "look_back_period_s": 5}}}]}).models[0].serve
    options = serve.scaling_options()["autoscaling_config"]
    assert options["look_back_period_s"] == 5 and "num_replicas" not in serve.scaling_options()
    assert ServeAutoscaling(**options).look_back_period_s == 5
    assert parse_config({"models": [{"name": "m", "serve": {"num_replicas": 2}}]}).models[0] \
        .serve.scaling_options() == {"num_replicas": 2}
