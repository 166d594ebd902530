"""One model behind the Open Inference Protocol (v2) REST API, on ONNX Runtime.

Mounted at ``/v2/models/<name>`` by the pipeline (``serve.run``) or by ``serve deploy`` with
the file from ``maas serve-config deploy.yaml`` (import path ``serve_apps.inference:build_app``).

    POST /v2/models/<name>/infer     GET /v2/models/<name>     GET /v2/models/<name>/ready
"""

# No `from __future__ import annotations` in serve apps: FastAPI reads the real annotation
# objects of the route methods to know which parameter is the JSON body.
import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from maas.config import ENV_NAME_PATTERN, expand_state_dir, sqlite_uri
from maas.export import ort_session
from maas.oip import (ErrorBody, InferenceRequest, InferenceResponse, InferError, ModelMetadata,
                      decode_input, encode_output)
from maas.registry import PRODUCTION, Registry
from serve_apps.http import make_api

log = logging.getLogger("ray.serve")


class InferenceArgs(BaseModel):
    """Typed arguments of this app, as written in the serve config."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state_dir: str = Field(description="the maas state directory; '~' is expanded on the replica")
    registry_uri: str | None = Field(
        None, description="MLflow registry URI; null: the SQLite database under state_dir")
    version: int | None = Field(None, ge=1, description="version to load; null: use alias")
    alias: Literal["production", "canary"] = Field(
        PRODUCTION, description="alias to load when version is null")
    key_env: str = Field("MAAS_MODEL_KEY", pattern=ENV_NAME_PATTERN,
                         description="environment variable with the key of encrypted models")
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, gt=0)
    ort_threads: int = Field(1, ge=1)
    max_rows: int = Field(1024, ge=1)

    def registry(self) -> Registry:
        return Registry(self.registry_uri or sqlite_uri(expand_state_dir(self.state_dir)),
                        key_env=self.key_env)


api = make_api(title="maas model", description="Open Inference Protocol v2 for one model")
ERRORS = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}}


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """Loads one registry-verified ONNX model per replica and answers OIP requests."""

    def __init__(self, args: InferenceArgs):
        registry = args.registry()
        self.info = registry.get(args.name, args.version or args.alias)
        # Verified (and decrypted) in memory; ONNX Runtime parses the bytes, no plaintext file.
        self.session = ort_session(registry.load(self.info), threads=args.ort_threads)
        self.max_rows = args.max_rows
        self.input_specs = {spec.name: spec for spec in self.info.inputs}
        self.output_names = [spec.name for spec in self.info.outputs]
        log.info("loaded model %s version %s (%s, sha256 %s) from %s", self.info.name,
                 self.info.version, self.info.variant, self.info.sha256, self.info.source)

    @api.get("/", response_model=ModelMetadata)
    def metadata(self) -> ModelMetadata:
        return ModelMetadata(name=self.info.name, versions=[str(self.info.version)],
                             platform="onnxruntime_onnx", inputs=self.info.inputs,
                             outputs=self.info.outputs)

    @api.get("/ready")
    def ready(self) -> dict[str, str | bool]:
        # A replica only receives traffic once __init__ (load + verify) has finished.
        return {"name": self.info.name, "version": str(self.info.version), "ready": True}

    # A plain `def`: FastAPI runs it in a worker thread, so ONNX Runtime never blocks the loop.
    @api.post("/infer", response_model=InferenceResponse, responses=ERRORS)
    def infer(self, request: InferenceRequest) -> InferenceResponse:
        feeds = self._decode(request)
        wanted = [o.name for o in request.outputs] if request.outputs else self.output_names
        unknown = [name for name in wanted if name not in self.output_names]
        if unknown:
            raise InferError(400, f"outputs: unknown output(s) {unknown}; "
                                  f"this model has {self.output_names}")
        results = self.session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.info.name,
            model_version=str(self.info.version),
            id=request.id,
            outputs=[encode_output(name, np.asarray(r)) for name, r in zip(wanted, results)],
        )

    def _decode(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            spec = self.input_specs.get(tensor.name)
            if spec is None:
                raise InferError(400, f"inputs[{index}].name: unknown input {tensor.name!r}; "
                                      f"this model takes {sorted(self.input_specs)}")
            feeds[tensor.name] = decode_input(tensor, spec, index, self.max_rows)
        missing = sorted(set(self.input_specs) - set(feeds))
        if missing:
            raise InferError(400, f"inputs: missing input(s) {missing}")
        return feeds


def build_app(args: dict) -> Application:
    """Serve entry point: ``serve_apps.inference:build_app`` with :class:`InferenceArgs`."""
    parsed = InferenceArgs.model_validate(args)
    return ModelServer.options(
        name=f"model-{parsed.name}",
        num_replicas=parsed.num_replicas,
        ray_actor_options={"num_cpus": parsed.num_cpus},
    ).bind(parsed)
