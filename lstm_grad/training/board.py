"""What a run shows in TensorBoard to someone who opens it cold: its HPARAMS row and its TEXT card.

HPARAMS: TensorBoard's table shows the first five hyperparameters, sorted by name (those that differ
between the runs shown come first: ``tensorboard/plugins/hparams/backend_context.py``,
``_sort_and_reduce_to_hparams_limit``, and the frontend's ``_computeHParams``, which displays five).
So the five a person asks for first are named ``run/...`` (``run/hidden_sizes``, ``run/lr``,
``run/source``, ``run/target``, ``run/window``), every other setting ``settings/<data|model>.<name>``.
Lists become ``"128, 64, 32"`` (TensorBoard drops them), booleans ``"true"`` / ``"false"`` (its summary
writer stores a bool as the number 0 or 1), integers ``"60"`` (a number shows as ``60.000``), ``None``
``"null"``; floats stay numbers (filters by interval, scatter plots). Private keys (``_instantiator``,
``_class_path``, which LightningCLI adds) are left out, and so are the settings a ``run/`` column shows.

TEXT: one card, ``about/run``, in Markdown: the data, the target, the model and the training settings
in words, and the test results beside persistence once tested.

CUSTOM SCALARS: one page, ``start here``, with the few charts that answer "did it learn, and did it beat
persistence": both losses on one chart, validation MAE beside persistence's and drift's, the gradient
norm of each layer, the total before and after clipping, and the share of clipped steps. The SCALARS
tab keeps every tag, sorted by name.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the five columns TensorBoard's HPARAMS table shows by default (sorted by name)
HEADLINE = ("run/hidden_sizes", "run/lr", "run/source", "run/target", "run/window")
SHOWN_IN_RUN = ("model.hidden_sizes", "model.lr", "data.window")  # not repeated under settings/
#: the five metric columns it shows by default (in the order given)
HEADLINE_METRICS = ("test/mae", "test/naive_mae", "test/rel_mae", "test/mase", "test/dm_p")
CARD_TAG = "about/run"
#: TensorBoard's custom-scalars layout (tags are regular expressions): {category: {chart: ["Multiline", tags]}}
SCALARS_LAYOUT = {"start here": {
    "loss: train vs validation (scaled targets)": ["Multiline", [r"^train/loss_epoch$", r"^val/loss$"]],
    "validation MAE (price): model vs persistence and drift": ["Multiline", [r"^val/mae$", r"^val/naive_mae$",
                                                                            r"^val/drift_mae$"]],
    "gradient norm per layer (before clipping)": ["Multiline", [r"^grad_norm/(?!total)"]],
    "gradient norm, total: before and after clipping": ["Multiline", [r"^grad_norm/total"]],
    "share of steps clipped": ["Multiline", [r"^grad_health/clip_rate$"]],
}}


def plain(value: Any) -> str | float:
    """Turn one hyperparameter into a value TensorBoard's HPARAMS table shows as written.

    >>> plain([128, 64, 32]), plain(True), plain(None), plain(60), plain(0.001), plain("gold")
    ('128, 64, 32', 'true', 'null', '60', 0.001, 'gold')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(plain(v)) for v in value)
    if isinstance(value, float):
        return value
    return str(value)


def hparams_view(model: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, str | float]:
    """Return the flat, readable hyperparameters of a forecaster run (see the module docstring).

    >>> view = hparams_view({"hidden_sizes": (8, 8), "lr": 0.01, "_instantiator": "x"},
    ...                     {"source": "data/gold.csv", "target": "Close", "target_mode": "log_return",
    ...                      "horizon": 1, "window": 20, "dayfirst": False})
    >>> [(k, view[k]) for k in HEADLINE]  # doctest: +NORMALIZE_WHITESPACE
    [('run/hidden_sizes', '8, 8'), ('run/lr', 0.01), ('run/source', 'gold.csv'),
     ('run/target', 'Close, log_return, horizon 1'), ('run/window', '20')]
    >>> view["settings/data.dayfirst"], any("instantiator" in k or "model.lr" in k for k in view)
    ('false', False)
    """
    view: dict[str, str | float] = {}
    for section, params in (("data", data), ("model", model)):
        for key, value in params.items():
            if not key.startswith("_") and f"{section}.{key}" not in SHOWN_IN_RUN:
                view[f"settings/{section}.{key}"] = plain(value)
    source = str(data.get("source") or "embedded")
    view.update({
        "run/hidden_sizes": plain(list(model.get("hidden_sizes") or [])),
        "run/lr": plain(model.get("lr")),
        "run/source": Path(source.split("://")[-1]).name or source,
        "run/target": f"{data.get('target') or 'auto'}, {data.get('target_mode', '?')}, horizon {data.get('horizon', '?')}",
        "run/window": plain(data.get("window")),
    })
    return dict(sorted(view.items()))


def run_card(model: Mapping[str, Any], data: Mapping[str, Any], trainer: Mapping[str, Any]) -> str:
    """Describe a run in Markdown for TensorBoard's TEXT tab.

    >>> print(run_card({"cell": "lstm", "hidden_sizes": [8], "residual": False, "dropout": 0.2, "lr": 0.001,
    ...                 "weight_decay": 0.0, "init": "default", "loss": "mse"},
    ...                {"source": "gold.csv", "target": "Close", "target_mode": "level", "horizon": 1, "window": 20,
    ...                 "features": ["Close"], "split": [0.7, 0.1, 0.2], "batch_size": 32},
    ...                {"precision": "32-true", "gradient_clip_val": 1.0, "max_epochs": 3}))
    | setting | value |
    | --- | --- |
    | data | gold.csv |
    | target | Close, predicted as level, 1 day(s) ahead |
    | inputs | 20 days of Close |
    | split | train 70 %, validation 10 %, test 20 % (chronological) |
    | model | LSTM 8, no residual adds, dropout 0.2, init default |
    | training | Adam lr 0.001, weight decay 0, mse loss, batch 32, up to 3 epochs |
    | gradients | clipped to norm 1 |
    | precision | 32-true |
    """
    split = [float(s) for s in data.get("split") or []]
    split_text = (f"train {split[0]:.0%}, validation {split[1]:.0%}, test {split[2]:.0%} (chronological)".replace("%", " %")
                  if len(split) == 3 else str(data.get("split")))
    clip = trainer.get("gradient_clip_val")
    algorithm = getattr(trainer.get("gradient_clip_algorithm"), "value", trainer.get("gradient_clip_algorithm"))
    rows = [
        ("data", data.get("source") or "embedded"),
        ("target", f"{data.get('target') or 'auto'}, predicted as {data.get('target_mode')}, "
                   f"{data.get('horizon')} day(s) ahead"),
        ("inputs", f"{data.get('window')} days of {', '.join(map(str, data.get('features') or ['the default features']))}"),
        ("split", split_text),
        ("model", f"{str(model.get('cell', 'lstm')).upper()} {plain(list(model.get('hidden_sizes') or []))}, "
                  f"{'residual adds' if model.get('residual') else 'no residual adds'}, dropout {model.get('dropout')}, "
                  f"init {model.get('init')}"),
        ("training", f"Adam lr {model.get('lr')}, weight decay {model.get('weight_decay'):g}, {model.get('loss')} loss, "
                     f"batch {data.get('batch_size')}, up to {trainer.get('max_epochs')} epochs"),
        ("gradients", f"clipped to {algorithm or 'norm'} {clip:g}" if clip else "not clipped"),
        ("precision", str(trainer.get("precision"))),
    ]
    return "\n".join(["| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def hparams_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Order a run's test metrics for the HPARAMS table, which shows the first five: the model's MAE,
    persistence's, their ratio, MASE and the Diebold-Mariano p-value, then the rest as they came.

    >>> list(hparams_metrics({"test/coverage_80": 0.8, "test/mase": 0.9, "test/mae": 6.5}))
    ['hparams/test/mae', 'hparams/test/mase', 'hparams/test/coverage_80']
    """
    first = [k for k in HEADLINE_METRICS if k in metrics]
    return {f"hparams/{k}": float(metrics[k]) for k in [*first, *(k for k in metrics if k not in first)]}


def results_card(metrics: Mapping[str, float]) -> str:
    """Put a run's test metrics beside persistence's (and drift's, where tested) in Markdown.

    >>> print(results_card({"test/mae": 6.5, "test/naive_mae": 6.4, "test/mase": 1.1, "test/naive_mase": 1.08,
    ...                     "test/dir_acc": 0.508, "test/dm_p": 0.41}))
    | test span | MAE (price) | MAE / persistence's | MASE | directional accuracy |
    | --- | --- | --- | --- | --- |
    | model | 6.500 | 1.016 | 1.100 | 50.8 % |
    | persistence (tomorrow = today) | 6.400 | 1.000 | 1.080 | n/a |
    <BLANKLINE>
    Diebold-Mariano test, model vs persistence (squared loss): p = 0.410. MASE = MAE / the training span's one-step naive MAE.
    """
    def cell(key: str, form: str = ".3f", scale: float = 1.0, unit: str = "") -> str:
        return f"{scale * metrics[key]:{form}}{unit}" if key in metrics else "n/a"

    def ratio(mae: str) -> str:  # the same test targets, so the ratio of the means is rel_mae
        naive = metrics.get("test/naive_mae")
        return f"{metrics[mae] / naive:.3f}" if mae in metrics and naive else "n/a"

    rows = [("model", "test/mae", "test/mase", cell("test/dir_acc", ".1f", 100, " %")),
            ("persistence (tomorrow = today)", "test/naive_mae", "test/naive_mase", "n/a")]
    if "test/drift_mae" in metrics:
        rows.append(("drift (the train span's mean change)", "test/drift_mae", "test/drift_mase",
                     cell("test/drift_dir_acc", ".1f", 100, " %")))
    lines = ["| test span | MAE (price) | MAE / persistence's | MASE | directional accuracy |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {cell(mae)} | {ratio(mae)} | {cell(mase)} | {direction} |" for name, mae, mase, direction in rows]
    notes = []
    if "test/dm_p" in metrics:
        notes.append(f"Diebold-Mariano test, model vs persistence (squared loss): p = {metrics['test/dm_p']:.3f}.")
    notes.append("MASE = MAE / the training span's one-step naive MAE.")
    return "\n".join([*lines, "", " ".join(notes)])
