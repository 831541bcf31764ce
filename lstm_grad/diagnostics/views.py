"""What TensorBoard shows besides the scalars: the custom-scalars layout and gradient histograms."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lstm_grad.diagnostics.groups import ParameterGroups


def custom_scalars_layout() -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: every group's ``grad_norm/*`` in one chart, ``grad_act/*``
    in another, the lags of ``grad_time/*`` in a third, ``grad_health/*`` in a fourth."""
    return {"gradients": {
        "grad_norm per layer (true L2 of .grad)": ["Multiline", [r"grad_norm/.*"]],
        "grad_act per layer output (|dL/dh|, probe batch)": ["Multiline", [r"grad_act/.*"]],
        "gradient through time (|dL/dx_t| by lag)": ["Multiline", [r"grad_time/lag_.*"]],
        "health": ["Multiline", [r"grad_health/.*"]],
    }}


def log_histograms(loggers: Sequence[Any], groups: ParameterGroups, step: int) -> None:
    """Log a histogram of each group's (dense) gradient, ``grad_hist/<group>``, to loggers that take them."""
    grouped: dict[str, list[torch.Tensor]] = {}
    for _, param, index in groups.members:
        if param.grad is not None and not param.grad.is_sparse:
            grouped.setdefault(groups.names[index], []).append(param.grad.detach().flatten().float())
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_histogram"):
            for group, grads in grouped.items():
                experiment.add_histogram(f"grad_hist/{group}", torch.cat(grads).cpu(), step)
