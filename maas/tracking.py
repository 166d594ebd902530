"""MLflow tracking for pipeline runs (SQLite under state_dir unless tracking.uri says otherwise).

One MLflow run per model per pipeline run, tagged with its run name: re-running with the same
run name (to resume an interrupted training) continues the same MLflow run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maas.config import DeployConfig
from maas.stores import is_tracking_server
from maas.variants import MeasuredVariant

RUN_NAME_TAG = "maas.run_name"
def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    else:
        out[prefix] = str(value)


class Tracker:
    """Writes runs through an explicit MLflow client (no global MLflow state)."""

    def __init__(self, cfg: DeployConfig):
        from mlflow.tracking import MlflowClient

        self.uri = cfg.tracking_uri
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            # Artifacts next to the database, not in ./mlruns of whatever directory we run from;
            # a tracking server places them itself (--serve-artifacts: through it, any node).
            artifacts = (None if is_tracking_server(self.uri)
                         else (cfg.state_path / "mlartifacts").as_uri())
            self.experiment_id = self.client.create_experiment(cfg.tracking.experiment,
                                                               artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run tagged ``run_name`` if one exists (a resume), else a new one with ``params``."""
        from mlflow.entities import Param

        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
            max_results=1)
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags=tags | {RUN_NAME_TAG: run_name})
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, v[:6000]) for k, v in sorted(flat.items())])
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "config.json"
            resolved.write_text(json.dumps(params, indent=2))
            self.client.log_artifact(run.info.run_id, str(resolved))
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))

    def log_training_curve(self, run_id: str, title: str, unit: str = "epoch",
                           right: tuple[str, str, str] = ("accuracy", "train_accuracy",
                                                          "val_accuracy")) -> None:
        """Plot the loss histories (left) and ``right`` (its axis label, then its metrics) per
        ``unit`` and attach ``training_curve.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        histories = {key: sorted(self.client.get_metric_history(run_id, key),
                                 key=lambda m: m.step)
                     for key in ("train_loss", "val_loss", *right[1:])}
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
        for key, points in histories.items():
            if points:
                axis = loss_ax if key.endswith("loss") else acc_ax
                axis.plot([p.step + 1 for p in points], [p.value for p in points], label=key)
        for axis, label in ((loss_ax, "loss"), (acc_ax, right[0])):
            axis.set_xlabel(unit)
            axis.set_ylabel(label)
            if axis.lines:
                axis.legend()
        fig.suptitle(title)
        fig.tight_layout()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "training_curve.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            self.client.log_artifact(run_id, str(path))

    def log_variants(self, run_id: str, variants: Sequence[MeasuredVariant], chosen: str) -> None:
        """The variants as ``variants.json`` plus one metric per variant and measure."""
        rows = [{"name": v.name, **v.metrics()} for v in variants]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "variants.json"
            path.write_text(json.dumps({"selected": chosen, "variants": rows}, indent=2))
            self.client.log_artifact(run_id, str(path))
        for variant in variants:
            self.log_metrics(run_id, {f"variant.{variant.name}.{k}": v
                                      for k, v in variant.metrics().items()})
        self.client.set_tag(run_id, "maas.variant", chosen)

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")
