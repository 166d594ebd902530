"""Integrated Gradients on ONNX Runtime (maas.explain): completeness, agreement with the
gradient integral torch computes, what it says about digits, and its refusals (no Ray)."""

import numpy as np
import pytest
import torch

from maas.config import DataConfig, ExportConfig, ModelArchConfig
from maas.data import load_splits
from maas.explain import ExplainParameters, integrated_gradients
from maas.export import export_onnx, serving_form
from maas.models import model_for
from maas.runtime import ort_session

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits MLP trained for a few seconds (held-out accuracy > 0.9), and its ONNX form."""
    splits = load_splits(DataConfig())
    torch.manual_seed(0)
    model = model_for(ModelArchConfig(hidden=[32]), splits)
    x, y = torch.tensor(splits.x_train), torch.tensor(splits.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    path = export_onnx(model, splits.n_features, tmp_path_factory.mktemp("ig") / "m.onnx",
                       ExportConfig())
    session = ort_session(path)
    accuracy = (session.run(["label"], {"input": splits.x_test})[0] == splits.y_test).mean()
    assert accuracy > 0.9
    return splits, model, session


def _forward(session):
    return lambda batch: session.run(["probabilities"], {"input": batch})[0]


def _torch_ig(model, x: np.ndarray, target: np.ndarray, steps: int = 512) -> np.ndarray:
    """Integrated Gradients from the zero baseline with autograd (midpoint rule)."""
    wrapped, _ = serving_form(model, "classification")
    alphas = (np.arange(steps) + 0.5) / steps
    total = np.zeros_like(x, dtype=np.float64)
    for alpha in alphas:
        point = torch.tensor(alpha * x, dtype=torch.float32, requires_grad=True)
        probabilities = wrapped(point)[0]
        probabilities[torch.arange(len(x)), torch.tensor(target)].sum().backward()
        total += point.grad.numpy()
    return x * total / steps


def test_attributions_add_up_to_the_change_of_the_output(trained):
    splits, _, session = trained
    x = splits.x_test[:8]
    for steps, baseline in ((1, 0.0), (16, 0.0), (64, 4.0)):
        result = integrated_gradients(_forward(session), x, ExplainParameters(
            steps=steps, baseline=baseline))
        probabilities = _forward(session)(x)
        assert np.array_equal(result.target, probabilities.argmax(axis=1))
        assert np.allclose(result.score, probabilities.max(axis=1), atol=1e-6)
        blank = _forward(session)(np.full_like(x, baseline))
        assert np.allclose(result.baseline_score, blank[np.arange(8), result.target], atol=1e-6)
        assert np.abs(result.delta).max() < 1e-5, (steps, baseline, result.delta)


def test_attributions_converge_to_the_gradient_integral(trained):
    splits, model, session = trained
    x = splits.x_test[:6]
    target = _forward(session)(x).argmax(axis=1)
    exact = _torch_ig(model, x, target)
    errors = []
    for steps in (4, 64):
        ours = integrated_gradients(_forward(session), x, ExplainParameters(steps=steps))
        errors.append(np.abs(ours.attributions - exact).sum() / np.abs(exact).sum())
    assert errors[1] < 0.05 and errors[1] < errors[0], errors
    # Plain occlusion (one pixel at a time back to the baseline) is not the integral.
    occluded = []
    for row, t in zip(x, target):
        batch = np.repeat(row[None, :], 64, axis=0)
        batch[np.arange(64), np.arange(64)] = 0.0
        occluded.append(_forward(session)(row[None, :])[0, t]
                        - _forward(session)(batch)[:, t])
    assert np.abs(np.array(occluded) - exact).sum() / np.abs(exact).sum() > 2 * errors[1]


def test_on_digits_the_strokes_carry_the_prediction(trained):
    splits, _, session = trained
    x = splits.x_test[:40]
    forward = _forward(session)
    result = integrated_gradients(forward, x, ExplainParameters(steps=32))
    # From the blank baseline, ink is what moves the output: the edge columns, blank in
    # nearly every digit, get (almost) nothing, so the heatmap shows the strokes.
    magnitude = np.abs(result.attributions)
    edges = np.zeros((8, 8), dtype=bool)
    edges[:, [0, -1]] = True
    assert magnitude[x > 0].sum() / magnitude.sum() > 0.999
    assert magnitude[:, edges.ravel()].mean() < 0.05 * magnitude[x > 0].mean()
    # Blanking the 6 pixels with the largest attributions costs the predicted class far more
    # than blanking 6 other drawn pixels at random (a deletion test).
    rng = np.random.default_rng(0)
    top_drop, random_drop = [], []
    for row, attr, t, before in zip(x, result.attributions, result.target, result.score):
        top = np.argsort(attr)[-6:]
        others = rng.choice(np.setdiff1d(np.flatnonzero(row > 0), top), 6, replace=False)
        for pixels, drops in ((top, top_drop), (others, random_drop)):
            blanked = row.copy()
            blanked[pixels] = 0.0
            drops.append(before - forward(blanked[None, :])[0, t])
    assert np.mean(top_drop) > 2 * np.mean(random_drop) and np.mean(top_drop) > 0.3


def test_parameters_that_do_not_fit_are_refused_by_name(trained):
    splits, _, session = trained
    forward, x = _forward(session), splits.x_test[:2]
    cases = ((ExplainParameters(baseline=[0.0] * 3), "parameters.baseline"),
             (ExplainParameters(target=10), "parameters.target"),
             (ExplainParameters(steps=1024), "parameters.steps"))
    for params, field in cases:
        with pytest.raises(ValueError, match=field):
            integrated_gradients(forward, x if field != "parameters.steps" else
                                 splits.x_test[:4], params)
    with pytest.raises(ValueError, match="method"):
        ExplainParameters.model_validate({"method": "lime"})
