"""What every model's pipeline shares, whether it trains or starts from a pretrained model:
the stage lines, the report, the promotion, serving and the smoke request.

    [1/4] train (or export and check)   [2/4] register and promote   [3/4] serve   [4/4] ask
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner

from maas.access import AccessStore, onboard
from maas.config import DeployConfig, ModelConfig
from maas.errors import MaasError
from maas.registry import CANARY, Registry, VersionInfo, check_promotion
from serve_apps.deploy import deploy_model, wait_for_version

STAGES = 4
SMOKE_TENANT = "maas-pipeline"  # the smoke request's tenant: its usage shows under this name


class PipelineError(MaasError):
    """A stage produced a result that must not be served."""


class VariantRow(BaseModel):
    """One measured variant, as the run summary lists it."""

    name: str
    selected: bool
    metrics: dict[str, float]


class ModelReport(BaseModel):
    """What one model's pipeline did (``--json`` prints these)."""

    name: str
    kind: str  # "onnx", or "text-embedding" for a pretrained embedder
    version: int  # registered by this run
    variant: str  # the optimize variant that version is
    promoted: bool  # whether this run's version took the production alias
    promotion: str  # what the promotion policy decided, and why
    served_version: int | None  # the production version now served (None: nothing to serve)
    run_name: str
    held_out: dict[str, float]  # of the registered variant: held_out_accuracy, held_out_rmse,
    # or for an embedder min_cosine and mean_cosine with the pretrained model's own embeddings
    max_abs_diff: float | None  # torch vs ONNX Runtime (None: an embedder, compared by cosine)
    endpoint: str | None
    mlflow_run_id: str
    example: list[float] | str  # the row (an embedder's: the sentence) sent to the endpoint
    served_answer: Any  # the first value of the last output: a classifier's label; an
    # embedder's: the cosine of its served embedding with sentence-transformers'
    stage_seconds: dict[str, float]  # by stage title
    variants: list[VariantRow]

    @property
    def held_out_accuracy(self) -> float | None:
        return self.held_out.get("held_out_accuracy")


def quiet_live(console: Console, renderable: RenderableType) -> Live:
    """A live display that leaves Python's stdout and stderr alone: rich would otherwise
    reroute them to the terminal while it runs, and what libraries print would bypass the
    log (jobs.terminal)."""
    return Live(renderable, console=console, transient=True, redirect_stdout=False,
                redirect_stderr=False)


@dataclass
class Stage:
    """A running stage; the block sets ``result``, the line printed when it ends."""

    result: str = "done"


class StageClock:
    """Prints one line per finished stage of one model, with its duration; on a terminal a
    spinner shows the stage that runs."""

    def __init__(self, console: Console, model: str):
        self.console = console
        self.model = model
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, number: int, title: str, spinner: bool = True) -> Iterator[Stage]:
        """Run the block as stage ``number`` of this model (``spinner`` False: the block
        shows its own progress; a terminal takes one live display at a time)."""
        started = time.perf_counter()
        stage = Stage()
        with (quiet_live(self.console, Spinner("dots", f"[{number}/{STAGES}] {title} "
                                                       f"{self.model} ...")) if spinner
              else nullcontext()):
            yield stage
        elapsed = self.seconds[title] = round(time.perf_counter() - started, 1)
        self.console.print(f"  [bold cyan][{number}/{STAGES}][/] {title} {self.model}: "
                           f"{stage.result} [dim]({elapsed:.1f}s)[/]", highlight=False)

    def detail(self, text: str) -> None:
        self.console.print(f"      {text}", highlight=False, markup=False)


def apply_promotion(model_cfg: ModelConfig, info: VersionInfo, registry: Registry
                    ) -> tuple[bool, str]:
    """Give ``info`` the alias ``promotion.policy`` calls for; (promoted, what happened)."""
    name, version = model_cfg.name, info.version
    if model_cfg.promotion.policy == "manual":
        registry.promote(name, version, CANARY)
        return False, (f"version {version} is the canary (promotion.policy manual); "
                       f"`maas models promote {name} {version}` puts it in production")
    production = registry.current(name)
    decision = check_promotion(model_cfg.promotion, info, production)
    if decision.passed:
        previous = registry.promote(name, version)
        was = "" if previous is None else f" (was version {previous})"
        return True, f"version {version} promoted to production{was}: {decision.reason}"
    kept = "no version" if production is None else f"version {production.version}"
    return False, (f"version {version} not promoted, {kept} stays in production: "
                   f"{decision.reason}")


@contextmanager
def _smoke_key(cfg: DeployConfig, model_cfg: ModelConfig) -> Iterator[dict[str, str]]:
    """Headers for the smoke request: with access on, a key of tenant ``maas-pipeline`` for
    this one model, with its agreement accepted and payload logging refused; revoked after."""
    if not cfg.access.enabled:
        yield {}
        return
    store = AccessStore(cfg.access_store)
    key, record, _ = onboard(store, [model_cfg], SMOKE_TENANT, "maas pipeline (smoke test)")
    try:
        yield {"Authorization": f"Bearer {key}"}
    finally:
        store.revoke(record.key_id)


Ask = Callable[[str, dict[str, str]], tuple[Any, str]]


def serve_and_ask(cfg: DeployConfig, model_cfg: ModelConfig, registry: Registry,
                  clock: StageClock, asking: str, ask: Ask
                  ) -> tuple[VersionInfo | None, str | None, Any]:
    """Stages 3 and 4: serve the production version, then ``ask(endpoint, headers)`` once
    with a smoke key, which returns (the answer, a line saying it); (the production version,
    the endpoint, the answer)."""
    production = registry.current(model_cfg.name)
    if production is None:
        clock.console.print(f"  [yellow]{model_cfg.name} has no production version: nothing to "
                            f"serve[/]")
        return None, None, None
    with clock.stage(3, "serve") as stage:
        endpoint = deploy_model(cfg, model_cfg)
        wait_for_version(cfg, model_cfg, production.version)
        stage.result = f"version {production.version} at {endpoint}"
    with clock.stage(4, asking) as stage, _smoke_key(cfg, model_cfg) as headers:
        answer, stage.result = ask(endpoint, headers)
    return production, endpoint, answer
