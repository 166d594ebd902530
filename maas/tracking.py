"""MLflow tracking for pipeline runs (SQLite under state_dir unless tracking.uri says otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maas.config import DeployConfig


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = str(value)


class Tracker:
    """One MLflow run per model per pipeline run, written through an explicit client."""

    def __init__(self, cfg: DeployConfig):
        from mlflow.tracking import MlflowClient

        self.uri = cfg.tracking_uri
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            # Artifacts next to the database, not in ./mlruns of whatever directory we run from.
            artifacts = (cfg.state_path / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(cfg.tracking.experiment,
                                                               artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, v[:6000]) for k, v in sorted(flat.items())])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")
