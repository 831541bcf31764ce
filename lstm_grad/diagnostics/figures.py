"""Pictures of the gradient through time: one profile, and the epoch x lag heat map (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def profile_figure(profile: Tensor, reach: float, step: int) -> Any:
    """Plot ‖∂L/∂x_t‖ against lag (1 = last input step), log scale, reach marked."""
    plt = pyplot()
    lags = torch.arange(1, len(profile) + 1)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.semilogy(lags.numpy(), profile.flip(0).clamp_min(1e-30).numpy(), color="tab:blue")
    if reach:
        axis.axvline(reach, color="tab:red", linestyle="--", linewidth=0.8, label=f"reach = {reach:.0f} steps")
        axis.legend(loc="best")
    axis.set_xlabel("lag (steps before the prediction)")
    axis.set_ylabel("|dL/dx_t|")
    axis.set_title(f"Gradient through time, step {step}")
    figure.tight_layout()
    plt.close(figure)
    return figure


def _log_grid(rows: Sequence[Sequence[float]]) -> tuple[Tensor, float, float]:
    """Return the probes x lags grid (float64, lag 1 first) and the ends of its log colour scale: the
    smallest positive value and the largest (at least 10x the smallest)."""
    grid = torch.tensor([list(row)[::-1] for row in rows], dtype=torch.float64)  # (probes, lags), lag 1 first
    positive = grid[grid > 0]
    low = float(positive.min()) if len(positive) else 1e-30
    high = float(grid.max()) if len(positive) else 1.0
    return grid, low, max(high, low * 10)


def draw_heatmap(axis: Any, labels: Sequence[str], rows: Sequence[Sequence[float]], title: str) -> Any:
    """Draw probes (rows, oldest on top) x lag (columns, lag 1 at the left) of ‖∂L/∂x_t‖ on ``axis``,
    log colour scale; ``rows`` are time-ordered profiles (last element = lag 1). Returns the image."""
    from matplotlib.colors import LogNorm

    grid, low, high = _log_grid(rows)
    image = axis.imshow(grid.clamp_min(low).numpy(), aspect="auto", interpolation="nearest", cmap="viridis",
                        norm=LogNorm(vmin=low, vmax=high),
                        extent=(0.5, grid.shape[1] + 0.5, len(rows) - 0.5, -0.5))
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels(labels, fontsize=7)
    axis.set_xlabel("lag (steps before the prediction)")
    axis.set_ylabel("probe")
    axis.set_title(title)
    return image


def heatmap_figure(labels: Sequence[str], rows: Sequence[Sequence[float]], title: str = "") -> Any:
    """One heat map with its colour bar (|dL/dx_t|, log scale)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.25 * len(rows)))
    image = draw_heatmap(axis, labels, rows, title or "Gradient through time across training")
    figure.colorbar(image, ax=axis, label="|dL/dx_t|")
    figure.tight_layout()
    plt.close(figure)
    return figure


def heatmap_image(rows: Sequence[Sequence[float]], cell: tuple[int, int] = (12, 6)) -> Tensor:
    """Return the epoch x lag heat map as an RGB image, (probes * cell[0], lags * cell[1], 3) uint8.

    The same grid and log colour scale (viridis) as :func:`draw_heatmap`, without axes: a colour map
    applied to an array costs milliseconds, where rendering a labelled matplotlib figure at the end of
    training cost ~0.5 s, the largest single cost of the default diagnostics (``benchmarks.bench``
    item 3). Rows top to bottom are probes oldest first; columns left to right are lag 1, 2, ...
    """
    from matplotlib import colormaps  # the colour table only; pyplot is not imported

    grid, low, high = _log_grid(rows)
    scaled = (grid.clamp_min(low).log() - math.log(low)) / (math.log(high) - math.log(low))
    rgba = colormaps["viridis"](scaled.clamp(0, 1).numpy(), bytes=True)  # (probes, lags, 4) uint8
    image = torch.from_numpy(rgba[..., :3])
    return image.repeat_interleave(cell[0], dim=0).repeat_interleave(cell[1], dim=1)  # (H, W, 3)
