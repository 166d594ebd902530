"""What a tenant's fine-tuning job runs: deploy.yaml's ``fine_tuning.recipe`` adjusted by the
job's hyperparameters, as one typed document the Ray job reads.

    hyper, recipe = resolve(service.recipe, n_epochs=3, batch_size=None, multiplier=None)
    spec = TuningSpec(job_id=..., deploy=deploy.model_copy(update={"models": [tuned]}), ...)
    path = spec.write(state_path)          # state_dir/fine_tuning/<job>/spec.json
    python -m jobs.finetune_service <path>

The tuned model is a chat model of its own (its registry and Serve name ``ft-<id>``), built
from the base's ``pretrained`` source with the base's serve settings and agreement.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field

from maas.config import DeployConfig, ModelConfig
from maas.config.base import StrictModel
from maas.config.finetune import FinetuneConfig, FinetuneRecipe, FineTuningConfig
from maas.finetune.examples import write_bytes
from maas.finetune.runs import Hyperparameters

SPEC_FILE = "spec.json"


def resolve(recipe: FinetuneRecipe, n_epochs: int | None, batch_size: int | None,
            multiplier: float | None) -> tuple[Hyperparameters, FinetuneRecipe]:
    """OpenAI's hyperparameters (None: "auto", the recipe's own) and the recipe they make.
    ``batch_size`` is examples per optimizer step over all workers, as OpenAI counts it."""
    epochs = recipe.epochs if n_epochs is None else n_epochs
    per_worker = (recipe.batch_size if batch_size is None
                  else max(1, math.ceil(batch_size / recipe.workers)))
    scale = 1.0 if multiplier is None else multiplier
    tuned = recipe.model_copy(update={"epochs": epochs, "batch_size": per_worker,
                                      "lr": min(1.0, recipe.lr * scale)})
    return Hyperparameters(n_epochs=epochs, batch_size=per_worker * recipe.workers,
                           learning_rate_multiplier=scale), tuned


def tuned_model(base: ModelConfig, app_name: str, recipe: FinetuneRecipe, train: Path,
                validation: Path | None, service: FineTuningConfig) -> ModelConfig:
    """The tuned model's own config: the base's source, serve settings and agreement."""
    finetune = FinetuneConfig(**recipe.model_dump(exclude_unset=True), train_file=str(train),
                              validation_file=str(validation) if validation else None)
    return ModelConfig(name=app_name, source="pretrained", pretrained=base.pretrained,
                       optimize={"variants": [service.variant]}, serve=base.serve,
                       agreement=base.agreement, finetune=finetune)


class TuningSpec(StrictModel):
    """Everything the Ray job of one fine-tuning job needs."""

    job_id: str = Field(description="the job (and its Ray job's submission id)")
    tenant: str = Field(description="who owns the data and the tuned model")
    base: str = Field(description="the base model's name under models")
    public_name: str = Field(description="the tuned model's name at /v1 (ft:...)")
    deploy: DeployConfig = Field(description="deploy.yaml's sections; models: the tuned model")

    @property
    def model(self) -> ModelConfig:
        return self.deploy.models[0]

    def write(self, state_path: Path) -> Path:
        path = spec_path(state_path, self.job_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Only what was set: defaults written out would trip the checks that refuse settings
        # a model does not use (an embedder's pretrained settings on a chat model).
        return write_bytes(path, self.model_dump_json(indent=1, exclude_unset=True).encode())


def spec_path(state_path: Path, job_id: str) -> Path:
    return state_path / "fine_tuning" / job_id / SPEC_FILE
