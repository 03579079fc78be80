"""Temperature scaling: recovers a known temperature, keeps every argmax, and ECE measures the gap."""

from __future__ import annotations

import numpy as np
import pytest

from streamgenre.model.contract import calibrate
from training.calibration import expected_calibration_error, fit_temperature


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fit_recovers_the_temperature_of_overconfident_outputs() -> None:
    rng = np.random.default_rng(0)
    logits = 4 * rng.normal(size=(3000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(logits / 3.0)])  # truth is 3x softer
    probs = softmax(logits)
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    calibrated = calibrate(probs, temperature)
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-6)
    assert expected_calibration_error(calibrated, labels) < 0.03 < 0.2 < expected_calibration_error(probs, labels)


def test_calibrate_equals_softmax_of_scaled_logits() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
    np.testing.assert_allclose(calibrate(softmax(logits), 2.0), softmax(logits / 2.0), atol=1e-6)


def test_ece_of_a_known_case() -> None:
    # Two windows at confidence 0.9 (one right), two at 0.6 (both right): bins 9 and 6.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
