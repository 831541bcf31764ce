"""Items 4-8 of ``python -m benchmarks.bench``: achieved GFLOP/s against the GEMM ceiling, data set-up
and bytes held, scaling with series length and window, predict, ``torch.compile``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from benchmarks.config import BenchConfig
from benchmarks.fits import hand_fit, make_data, train_epoch
from benchmarks.flops import gemm_flops, gemm_shapes, lstm_gate_flops
from benchmarks.stats import compare, fit_exponent, interleave, pick, summary, tensor_bytes, timed
from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import layer_grad_norms
from lstm_grad.forecaster.optimizer import make_adam
from lstm_grad.model import ResidualLSTM
from lstm_grad.module import LSTMForecaster


GEMM_TRIES = 3  # GEMM-only runs per round, the best one taken: a single run's rate swung 128 .. 186 GFLOP/s


def gemm_program(shapes: list[tuple[int, int, int, int]]) -> Callable[[], None]:
    """Return a thunk running the GEMMs of one training batch (preallocated, ``torch.mm(out=)``)."""
    ops = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n), count) for m, k, n, count in shapes]

    def run() -> None:
        for a, b, c, count in ops:
            for _ in range(count):
                torch.mm(a, b, out=c)
    return run


def item_gemm(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    """Achieved training GFLOP/s (gate matmuls) of the plain loop's epoch vs the same GEMMs alone.

    Each round times one epoch, then the epoch's GEMMs alone ``GEMM_TRIES`` times (a run is ~1/10 of an
    epoch); the round's fraction is the epoch's rate over the best of those GEMM rates, taken at the same
    moment, and the headline is the median over rounds. The best epoch rate over the best GEMM rate of
    the whole item (``fraction_of_maxima``, the earlier headline) moved 19 points between two runs
    (0.72, 0.91): maxima taken minutes apart see the machine at different speeds.
    """
    n_train = len(dm.datasets["train"])
    train_flops = 3 * lstm_gate_flops(dm.n_features, cfg.hidden_sizes, dm.window) * n_train
    shapes = gemm_shapes(dm.n_features, cfg.hidden_sizes, dm.window, dm.batch_size)
    batches = math.ceil(n_train / dm.batch_size)
    gemm_batch = gemm_program(shapes)
    gemm_total = gemm_flops(shapes) * batches
    torch.manual_seed(0)
    model = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
    opt = make_adam(model.parameters(), lr=1e-3)  # the forecaster's optimizer
    epoch = lambda: train_epoch(model, opt, dm)  # noqa: E731
    gemms = lambda: [gemm_batch() for _ in range(batches)]  # noqa: E731  as many full batches as the epoch
    for _ in range(cfg.warmup):
        epoch()
        gemms()
    achieved, ceiling = [], []
    for _ in range(max(cfg.repeats, 5)):
        achieved.append(train_flops / getattr(timed(epoch)[0], cfg.clock) / 1e9)
        ceiling.append(max(gemm_total / getattr(timed(gemms)[0], cfg.clock) / 1e9 for _ in range(GEMM_TRIES)))
    fractions = [a / c for a, c in zip(achieved, ceiling)]
    return {"achieved_gflops": summary(achieved), "ceiling_gflops": summary(ceiling),
            "fraction": statistics.median(fractions), "pair_fractions": summary(fractions),
            "fraction_of_maxima": max(achieved) / max(ceiling), "train_gflop_per_epoch": train_flops / 1e9,
            "formula": "3 * sum_layers 2*T*4H*(I+H) per window; fraction = median over rounds of the epoch's rate "
                       "over the best of that round's GEMM rates",
            "clock": cfg.clock}


def item_data(cfg: BenchConfig) -> dict[str, Any]:
    """Set-up seconds of the full series' data and the bytes its windows hold (views, not copies)."""
    times, dm = [], None
    for _ in range(max(3, cfg.repeats)):
        t, dm = timed(lambda: make_data(cfg, cfg.full_days))
        times.append(getattr(t, cfg.clock))
    sets = dm.datasets.values()
    held = tensor_bytes([t for ds in sets for t in (ds.features, ds.windows, ds.targets, ds.anchor, ds.start)])
    series = dm.datasets["train"].features.nbytes
    copied = sum(len(ds) * ds.windows.shape[1] * ds.windows.shape[2] * ds.features.element_size() for ds in sets)
    return {"setup_s": summary(times), "days": len(dm._raw["features"]), "bytes_held": held,
            "series_bytes": series, "bytes_if_windows_copied": copied, "copies_of_series": held / series}


def item_scaling(cfg: BenchConfig) -> dict[str, Any]:
    """Epoch time of the plain loop (train only) vs series length and vs window, interleaved."""
    def variant(days: int | None, window: int) -> Callable[[], None]:
        dm = make_data(cfg, days, window)
        torch.manual_seed(0)
        model = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
        opt = make_adam(model.parameters(), lr=1e-3)  # the forecaster's optimizer
        return lambda: train_epoch(model, opt, dm)
    full = len(make_data(cfg, cfg.full_days)._raw["features"])
    by_days = {d or full: variant(d, cfg.window) for d in cfg.scaling_days}
    by_window = {w: variant(cfg.last_n_days, w) for w in cfg.scaling_windows}
    repeats = max(1, cfg.repeats // 2)
    out: dict[str, Any] = {"clock": cfg.clock}
    by_window[cfg.window]()  # warm-up; every later variant runs on warm code and allocator
    for label, variants in (("days", by_days), ("window", by_window)):
        runs = interleave(variants, repeats, warmup=0)
        medians = {k: statistics.median(pick(v, cfg.clock)) for k, v in runs.items()}
        out[label] = {str(k): summary(pick(v, cfg.clock)) for k, v in runs.items()}
        out[f"exponent_{label}"] = fit_exponent(list(medians), list(medians.values()))
    return out


def item_predict(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    """Windows / s of ``Trainer.predict`` over the test span vs a plain no-grad loop."""
    torch.manual_seed(0)
    module = LSTMForecaster(n_features=dm.n_features, hidden_sizes=cfg.hidden_sizes, residual=True, init="orthogonal",
                            horizon=dm.horizon)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    test = dm.datasets["test"]

    def plain() -> None:
        module.eval()
        with torch.no_grad():
            for idx in torch.arange(len(test)).split(dm.batch_size):
                x, y, anchor, _ = test.__getitems__(idx)
                dm.inverse_transform(module(x), anchor)

    runs = interleave({"lightning": lambda: trainer.predict(module, datamodule=dm, return_predictions=True),
                       "loop": plain}, cfg.repeats, cfg.warmup)
    out = compare(runs, "lightning", "loop", cfg.clock)
    out["windows"] = len(test)
    out["windows_per_s"] = summary([len(test) / s for s in pick(runs["lightning"], cfg.clock)])
    out["loop_windows_per_s"] = summary([len(test) / s for s in pick(runs["loop"], cfg.clock)])
    return out


def item_compile(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    """``torch.compile`` of the model on CPU: epoch-time ratio and whether grad norms stay identical."""
    torch.manual_seed(0)
    eager = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
    compiled_twin = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon, dropout=0.0)
    eager.dropout.p = 0.0
    compiled_twin.load_state_dict(eager.state_dict())
    x, y, *_ = dm.datasets["train"].__getitems__(list(range(dm.batch_size)))
    try:
        compiled = torch.compile(compiled_twin)
        F.mse_loss(eager(x), y).backward()
        t, _ = timed(lambda: F.mse_loss(compiled(x), y).backward())
        a, b = layer_grad_norms(eager), layer_grad_norms(compiled_twin)
        diff = max(abs(float(a[k]) - float(b[k])) / max(float(a[k]), 1e-12) for k in a)
        runs = interleave({"compiled": hand_fit(cfg, dm, 1, validate=False, compile_model=True),
                           "eager": hand_fit(cfg, dm, 1, validate=False)}, max(2, cfg.repeats // 2), cfg.warmup)
    except Exception as error:  # inductor needs a C++ toolchain; report, do not fail the bench
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    out = compare(runs, "compiled", "eager", cfg.clock)
    out.update(first_step_s=t.wall, max_rel_grad_norm_diff=diff, identical_norms=diff == 0.0)
    return out
