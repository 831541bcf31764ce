"""Pictures of gradients: one time profile, the epoch x lag heat map, every group's norm over steps
(matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
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


def log_range(grids: Iterable[Sequence[Sequence[float]]]) -> tuple[float, float]:
    """Return one log colour scale ``(vmin, vmax)`` for several heat maps: the smallest positive value
    and the largest over all of them (at least 10x apart), so side-by-side maps compare by colour.

    >>> log_range([[[1e-6, 1e-2]], [[0.0, 1e-4], [3e-1, 2e-3]]])
    (1e-06, 0.3)
    """
    values = [float(v) for rows in grids for row in rows for v in row]
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    low = min(positive, default=1e-30)
    high = max(positive, default=1.0)
    return low, max(high, low * 10)


def draw_heatmap(axis: Any, labels: Sequence[str], rows: Sequence[Sequence[float]], title: str,
                 vmin: float | None = None, vmax: float | None = None) -> Any:
    """Draw probes (rows, oldest on top) x lag (columns, lag 1 at the left) of ‖∂L/∂x_t‖ on ``axis``,
    log colour scale; ``rows`` are time-ordered profiles (last element = lag 1). ``vmin`` / ``vmax``
    fix the colour scale's ends (:func:`log_range` over several maps); by default this map's own
    smallest positive and largest values. Returns the image."""
    from matplotlib.colors import LogNorm

    grid, low, high = _log_grid(rows)
    low, high = vmin if vmin is not None else low, vmax if vmax is not None else high
    image = axis.imshow(grid.clamp_min(low).numpy(), aspect="auto", interpolation="nearest", cmap="viridis",
                        norm=LogNorm(vmin=low, vmax=high),
                        extent=(0.5, grid.shape[1] + 0.5, len(rows) - 0.5, -0.5))
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels(labels, fontsize=7)
    axis.set_xlabel("lag (steps before the prediction)")
    axis.set_ylabel("probe")
    axis.set_title(title)
    return image


def group_colours(names: Sequence[str]) -> dict[str, Any]:
    """Give every group its own colour, in the order given: tab10 up to 10 groups, tab20 up to 20, then
    evenly spaced along turbo (the default colour cycle repeats after 10, so ``layers.0`` and
    ``layers.10`` would look alike)."""
    from matplotlib import colormaps

    n = len(names)
    if n <= 20:
        table = colormaps["tab10" if n <= 10 else "tab20"]
        return {name: table(i) for i, name in enumerate(names)}
    return {name: colormaps["turbo"](i / (n - 1)) for i, name in enumerate(names)}


def draw_norms(axis: Any, norms: Mapping[str, Sequence[tuple[int, float]]], order: Sequence[str], *,
               emphasis: Mapping[str, str] | None = None, marks: Sequence[tuple[int, str, str]] = (),
               threshold: float | None = None) -> None:
    """Draw every group's gradient norm over steps (log scale) on ``axis``, the legend in ``order``
    (the model's): ``total`` dashed black, ``total_clipped`` left out, the groups in ``emphasis``
    thicker with its note in their label, a vertical line per ``marks`` entry ``(step, label, colour)``
    and the vanishing ``threshold`` as a dotted line."""
    emphasis = emphasis or {}
    groups = [g for g in order if g in norms and g not in ("total", "total_clipped")]
    colours = group_colours(groups)
    for name in [*groups, *(["total"] if "total" in norms else [])]:
        steps, values = zip(*norms[name]) if norms[name] else ((), ())
        style = {"color": "black", "linestyle": "--", "linewidth": 1.0} if name == "total" else \
            {"color": colours[name], "linewidth": 2.6 if name in emphasis else 1.0}
        label = f"{name} ({emphasis[name]})" if name in emphasis else name
        axis.semilogy(steps, [max(v, 1e-30) for v in values], label=label, **style)
    for step, label, colour in marks:
        axis.axvline(step, color=colour, linestyle="-.", linewidth=1.2, label=label)
    if threshold is not None:
        axis.axhline(threshold, color="grey", linewidth=0.6, linestyle=":", label=f"vanishing threshold {threshold:g}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("gradient L2 norm")
    entries = len(groups) + len(marks) + 2
    if entries > 10:  # beside the plot, so the lines stay visible
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + entries // 24)
    else:
        axis.legend(fontsize=7, loc="best")


def _ticks(count: int, most: int) -> list[int]:
    """Up to ``most`` evenly spaced 1-based positions out of ``count``, always the first and the last.

    >>> _ticks(60, 6), _ticks(3, 6)
    ([1, 13, 25, 36, 48, 60], [1, 2, 3])
    """
    if count <= most:
        return list(range(1, count + 1))
    return sorted({round(1 + i * (count - 1) / (most - 1)) for i in range(most)})


def heatmap_image(labels: Sequence[str], rows: Sequence[Sequence[float]], cell: tuple[int, int] = (12, 8)) -> Tensor:
    """Return the labelled epoch x lag heat map of |dL/dx_t| as an RGB image, (height, width, 3) uint8.

    The grid is :func:`draw_heatmap`'s (probes top to bottom, oldest first; lag 1 at the left; viridis on
    a log scale from the smallest positive value to the largest), ``cell`` = (rows, columns) pixels per
    value, with the probes' labels on the left, lag ticks and the axis title below, and a colour bar with
    its ends and middle on the right. Drawn with Pillow's default font onto the colour-mapped array: a
    few milliseconds, where a matplotlib figure of the same map cost ~0.2 s (0.6 s with its import), a
    tenth of the default fit's 3 % diagnostics budget by itself (``benchmarks.bench`` item 3).
    """
    from matplotlib import colormaps  # the colour table only; pyplot is not imported
    from PIL import Image, ImageDraw, ImageFont

    grid, low, high = _log_grid(rows)
    probes, lags = grid.shape
    shares = ((grid.clamp_min(low).log() - math.log(low)) / (math.log(high) - math.log(low))).clamp(0, 1)
    cells = colormaps["viridis"](shares.numpy(), bytes=True)[..., :3]  # (probes, lags, 3) uint8
    cells = np.repeat(np.repeat(cells, cell[0], axis=0), cell[1], axis=1)
    font = ImageFont.load_default()
    text_width = max((font.getbbox(str(label))[2] for label in labels), default=0)
    left, top, bottom, bar = text_width + 10, 22, 34, 14
    width, height = left + cells.shape[1] + 12 + bar + 48, top + cells.shape[0] + bottom
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(cells)), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 4), "|dL/dx_t| per probe (rows) and lag (columns), log colour scale", fill="black", font=font)
    for row in _ticks(probes, max(2, cells.shape[0] // 12)):  # one label per 12 px at most
        y = top + (row - 1) * cell[0] + cell[0] // 2
        draw.text((left - 4, y), str(labels[row - 1]), fill="black", font=font, anchor="rm")
    for lag in _ticks(lags, 7):
        x = left + (lag - 1) * cell[1] + cell[1] // 2
        draw.line([(x, top + cells.shape[0]), (x, top + cells.shape[0] + 3)], fill="black")
        draw.text((x, top + cells.shape[0] + 4), str(lag), fill="black", font=font, anchor="mt")
    draw.text((left + cells.shape[1] // 2, height - 3), "lag (steps before the prediction)", fill="black", font=font,
              anchor="md")
    x0, span = left + cells.shape[1] + 12, cells.shape[0]
    ramp = colormaps["viridis"](np.linspace(1.0, 0.0, span), bytes=True)[:, :3]  # the largest value on top
    canvas.paste(Image.fromarray(np.ascontiguousarray(np.repeat(ramp[:, None, :], bar, axis=1))), (x0, top))
    for share, y in ((1.0, top), (0.5, top + span // 2), (0.0, top + span - 1)):
        value = math.exp(math.log(low) + share * (math.log(high) - math.log(low)))
        label = f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")  # 4e0, 2e-3, 1e-6
        draw.text((x0 + bar + 3, y), label, fill="black", font=font, anchor="lm")
    return torch.from_numpy(np.asarray(canvas).copy())
