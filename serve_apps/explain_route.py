"""``POST /v2/models/<name>/explain`` (and ``/versions/<v>/explain``): per-feature
attributions of the served version's output, by Integrated Gradients on ONNX Runtime
(maas.explain).

The body is an infer body (the same ``inputs``, limits and binary-free JSON) whose
``parameters`` choose the method's settings; the answer is an infer answer whose tensors are
``attributions`` (rows x features), ``target`` (the explained output column of each row),
``score`` and ``baseline_score`` (the output there and at the baseline), and whose
``parameters`` name the method, its settings and the largest completeness error. The route
goes through the model's access gate and is metered as ``<name>/explain``.
"""

import numpy as np
from pydantic import ValidationError

from maas.explain import METHOD, ExplainParameters, integrated_gradients
from maas.oip import InferenceRequest, InferError
from serve_apps.http import validation_error
from serve_apps.versions import Answer, Loaded



class ExplainRequest(InferenceRequest):
    """An infer body whose ``parameters`` are the explanation's (all optional)."""

    parameters: ExplainParameters | None = None


def parse_explain(raw: bytes) -> ExplainRequest:
    """The body as an :class:`ExplainRequest`, or a 400 naming the field."""
    try:
        return ExplainRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def _single_input(loaded: Loaded) -> str:
    specs = loaded.input_specs
    if loaded.encoder is not None or len(specs) != 1 or \
            next(iter(specs.values())).datatype != "FP32":
        taken = {name: spec.datatype for name, spec in specs.items()}
        raise InferError(400, f"inputs: explanations need a model of one FP32 input; "
                              f"{loaded.info.name} takes {taken}")
    return next(iter(specs))


def explain(loaded: Loaded, request: ExplainRequest, max_rows: int) -> Answer:
    """The attributions for ``request`` by ``loaded`` (blocking: ONNX Runtime runs
    rows x steps x (features + 1) rows; call it off the event loop)."""
    name = _single_input(loaded)
    x = loaded.feeds(request, max_rows)[name]
    if x.ndim != 2:
        raise InferError(400, f"inputs[0].shape: {list(x.shape)}; explanations take rows of "
                              f"features, [rows, features]")
    params = request.parameters or ExplainParameters()
    output = params.output or loaded.output_names[0]
    if output not in loaded.output_names:
        raise InferError(400, f"parameters.output: unknown output {output!r}; this model has "
                              f"{loaded.output_names}")

    def forward(batch: np.ndarray) -> np.ndarray:
        scores = loaded.run([output], {name: batch})[0]
        if not np.issubdtype(scores.dtype, np.floating):
            raise InferError(400, f"parameters.output: {output!r} is {scores.dtype}; "
                                  f"attributions need a float output such as "
                                  f"{loaded.output_names[0]!r}")
        return scores

    try:
        result = integrated_gradients(forward, x, params)
    except ValueError as exc:
        raise InferError(400, str(exc)) from None
    settings = {"method": METHOD, "output": output, "steps": params.steps,
                "baseline": params.baseline, "seed": params.seed,
                "max_abs_delta": float(np.abs(result.delta).max())}
    return Answer(loaded, request.id, [
        ("attributions", result.attributions.astype(np.float32)),
        ("target", result.target), ("score", result.score.astype(np.float32)),
        ("baseline_score", result.baseline_score.astype(np.float32))], settings)

