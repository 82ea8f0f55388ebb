"""Scaling fits of a metric against a swept size N.

- log-linear, ``y = a + b·log10(N)``: performance grows logarithmically with data (Sun et al. 2017,
  "Revisiting Unreasonable Effectiveness of Data in Deep Learning Era", section 5.1);
- saturating power law, ``y = c - a·N^(-b)``: a ceiling ``c`` approached as a power of N (from
  below for an accuracy, ``a > 0``; from above for an error or a loss, ``a < 0``).

Each fit reports its parameters, R² on the points it was given, and how well it extrapolates: the
largest N predicted from a fit to the other points (the error is prediction minus measurement).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

FIT_KINDS = ("log_linear", "power_law")


@dataclass
class Fit:
    kind: str
    params: dict[str, float]
    r2: float
    held_out_x: float | None = None  # the largest N, predicted from the rest
    held_out_prediction: float | None = None
    held_out_error: float | None = None

    def predict(self, n: np.ndarray) -> np.ndarray:
        p = self.params
        if self.kind == "log_linear":
            return p["a"] + p["b"] * np.log10(n)
        return p["c"] - p["a"] * np.power(n, -p["b"])

    def formula(self) -> str:
        p = self.params
        if self.kind == "log_linear":
            return f"y = {p['a']:.4g} + {p['b']:.4g}·log10(N)"
        return f"y = {p['c']:.4g} - {p['a']:.4g}·N^(-{p['b']:.4g})"


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    residual = float(((y - predicted) ** 2).sum())
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)


def _log_linear(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], callable]:
    b, a = np.polyfit(np.log10(x), y, deg=1)
    return {"a": float(a), "b": float(b)}, lambda n: a + b * np.log10(n)


def _power_law(x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], callable]:
    def model(n, a, b, c):
        return c - a * np.power(n, -b)

    # start from a limit a little beyond the last point (above a rising curve, below a falling
    # one) and a decay of 0.5
    rising = y[-1] >= y[0]
    span = max(float(y.max() - y.min()), 1e-6)
    c0 = float(y.max()) + 0.1 * span if rising else float(y.min()) - 0.1 * span
    a0 = (c0 - float(y[0])) * float(x[0]) ** 0.5
    (a, b, c), _ = curve_fit(model, x, y, p0=(a0, 0.5, c0), bounds=([-np.inf, 1e-4, -np.inf], [np.inf, 5.0, np.inf]),
                             maxfev=20000)
    return {"a": float(a), "b": float(b), "c": float(c)}, lambda n: model(n, a, b, c)


FITTERS = {"log_linear": (_log_linear, 2), "power_law": (_power_law, 3)}


def fit_curve(kind: str, x: list[float], y: list[float]) -> Fit:
    """Fit ``kind`` to the points; the held-out check needs one point more than the parameters."""
    if kind not in FITTERS:
        raise ValueError(f"unknown fit {kind!r}; known: {', '.join(FIT_KINDS)}")
    fitter, num_params = FITTERS[kind]
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < num_params or (xs <= 0).any():
        raise ValueError(f"{kind} needs at least {num_params} points with N > 0, got {list(x)}")
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    params, predict = fitter(xs, ys)
    fit = Fit(kind=kind, params=params, r2=_r2(ys, predict(xs)))
    if len(xs) > num_params:
        _, predict_rest = fitter(xs[:-1], ys[:-1])
        prediction = float(predict_rest(xs[-1]))
        fit.held_out_x, fit.held_out_prediction = float(xs[-1]), prediction
        fit.held_out_error = prediction - float(ys[-1])
    return fit

