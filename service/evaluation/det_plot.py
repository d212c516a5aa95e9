"""DET plots (Martin et al., 1997): miss rate vs false-alarm rate on normal-deviate axes.

On probit (inverse standard normal CDF) axes, two Gaussian score distributions give a straight
line, so systems are easy to compare across the whole range of operating points — the standard
presentation in NIST SRE and VoxCeleb evaluations.

matplotlib is imported inside :func:`save_det_plot` (and drawn with the Agg canvas on a
standalone ``Figure``, never through pyplot's global state), so importing this module is cheap
and safe in a server process.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np

from service.decisions.scoring import eer_from_curve

# Tick positions in the usual DET style (fractions, labelled in %): 1-2-5 per decade up to
# 5 %, then 10, 20, 40, 60, 80, 90, 95, 99 %.
_TICKS = (
    *(m * 10.0**e for e in range(-5, -1) for m in (1, 2, 5)),
    *(0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99),
)
_MAX_TICKS = 12


def _probit(rates: np.ndarray, zero_at: float | None = None) -> np.ndarray:
    """Normal deviate of each rate; NaN (matplotlib breaks the line there) where it has none.

    A rate of exactly 0 has no deviate either; with ``zero_at`` (a rate below the axis range)
    it is drawn there, so the step where a curve reaches 0 runs off the edge of the plot
    instead of stopping short of it.
    """
    inv_cdf = NormalDist().inv_cdf
    low = np.nan if zero_at is None else inv_cdf(zero_at)
    return np.array(
        [inv_cdf(r) if 0.0 < r < 1.0 else low if r == 0.0 else np.nan for r in np.ravel(rates)],
        dtype=np.float64,
    )


def _lower_limit(rate_arrays: list[np.ndarray]) -> float:
    """The tick at or below the smallest non-zero rate, so the 1/N steps of the smallest test
    set stay visible; 1 % when there is none."""
    positive = [float(np.min(r[r > 0])) for r in rate_arrays if np.any(r > 0)]
    smallest = min(positive, default=0.01)
    return max([t for t in _TICKS if t <= smallest * (1 + 1e-9)], default=_TICKS[0])


def _ticks(low: float, high: float) -> list[float]:
    ticks = [t for t in _TICKS if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
    if len(ticks) > _MAX_TICKS:  # many decades: keep 2s and 5s only from 1 % up
        ticks = [t for t in ticks if t >= 0.01 or f"{t:.0e}".startswith("1")]
    return ticks


def save_det_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """Write a DET plot (PNG, or whatever ``path``'s suffix tells matplotlib) of ``curves``.

    ``curves`` maps a system name to its ``(far, frr)`` arrays, e.g. the first two values of
    :func:`service.decisions.scoring.det_curve`. Each curve's EER point is marked and given in
    the legend. Rates of exactly 0 have no normal deviate: where a curve reaches 0 it runs off
    the plot.
    """
    if not curves:
        raise ValueError("no curves to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    eers = [eer_from_curve(far, frr) for far, frr in curves.values()]
    fars = [np.asarray(far, dtype=np.float64) for far, _ in curves.values()]
    frrs = [np.asarray(frr, dtype=np.float64) for _, frr in curves.values()]
    # Both axes share the upper limit (40 %+ as usual, wider when a system is itself that bad);
    # each lower limit follows its own class's smallest step (impostor trials usually outnumber
    # genuine ones by far, so FAR reaches lower).
    high = 0.5 if max(eers) <= 0.3 else 0.99
    # The EER points (interpolated, so possibly below every plotted rate) must be visible too.
    eer_points = [np.array(eers)]
    x_low, y_low = _lower_limit(fars + eer_points), _lower_limit(frrs + eer_points)

    fig = Figure(figsize=(6.4, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for (name, _), far, frr, rate in zip(curves.items(), fars, frrs, eers, strict=True):
        x, y = _probit(far, zero_at=x_low / 10), _probit(frr, zero_at=y_low / 10)
        (line,) = ax.plot(x, y, linewidth=1.5, label=f"{name} (EER {rate * 100:.2f} %)")
        point = _probit(np.array([rate]))  # NaN (not drawn) for an EER of 0
        ax.plot(point, point, "o", color=line.get_color(), markersize=6, zorder=3)

    x_edge = _probit(np.array([x_low, high]))
    y_edge = _probit(np.array([y_low, high]))
    diagonal = _probit(np.array([min(x_low, y_low), high]))
    ax.plot(diagonal, diagonal, color="0.6", linestyle=":", linewidth=0.8)  # FAR == FRR
    ax.set_xlim(*x_edge)
    ax.set_ylim(*y_edge)
    x_ticks, y_ticks = _ticks(x_low, high), _ticks(y_low, high)
    ax.set_xticks(_probit(np.array(x_ticks)), [f"{t * 100:g}" for t in x_ticks])
    ax.set_yticks(_probit(np.array(y_ticks)), [f"{t * 100:g}" for t in y_ticks])
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("False reject rate (%)")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(True, color="0.85", linewidth=0.6)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
