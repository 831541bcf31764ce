"""The timed items of ``scripts/bench.py``: each builds its variants and returns a dict for the JSON.

1 Trainer.fit vs a hand loop, 2 grad-norm logging every step vs off, 3 diagnostics callbacks vs off,
4 achieved GFLOP/s vs the GEMM ceiling, 5 data set-up and bytes, 6 scaling, 7 predict, 8 torch.compile,
9 epoch time vs darts on the same plain LSTM stack (``bench_peers.py``, when darts is installed).
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from bench import (BenchConfig, compare, fit_exponent, gemm_flops, gemm_shapes, interleave, lstm_gate_flops,
                   machine_note, pick, summary, tensor_bytes, timed)
from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import layer_grad_norms
from lstm_grad.model import ResidualLSTM
from lstm_grad.module import LSTMForecaster

CLIP = 1.0  # the recipe's clipnorm, as in the CLI defaults
LOG_EVERY = 10  # the CLI's default log_every_n_steps


def quiet() -> None:
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|num_workers).*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_data(cfg: BenchConfig, days: int | None, window: int | None = None) -> GoldDataModule:
    dm = GoldDataModule(last_n_days=days, window=window or cfg.window, batch_size=cfg.batch_size)
    dm.setup("fit")
    return dm


class NoGradNorms(LSTMForecaster):
    """``LSTMForecaster`` with gradient-norm logging off: the B side of item 2."""

    def on_after_backward(self) -> None:
        pass


def lightning_fit(cfg: BenchConfig, dm: GoldDataModule, epochs: int, module_cls: type = LSTMForecaster,
                  callbacks: Callable[[], list] | None = None, log_every: int = LOG_EVERY, seed: int = 0
                  ) -> Callable[[], pl.Trainer]:
    """Return a thunk that runs ``Trainer.fit`` the way the CLI does: TensorBoard, metrics,
    checkpoint each epoch, clipnorm 1.0; progress bar and model summary off."""
    def run() -> pl.Trainer:
        torch.manual_seed(seed)
        module = module_cls(n_features=dm.n_features, hidden_sizes=cfg.hidden_sizes, horizon=dm.horizon)
        folder = tempfile.mkdtemp(prefix="bench_")
        trainer = pl.Trainer(max_epochs=epochs, logger=TensorBoardLogger(folder, name="bench"),
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=log_every,
                             gradient_clip_val=CLIP, default_root_dir=folder,
                             callbacks=callbacks() if callbacks else None)
        trainer.fit(module, datamodule=dm)
        shutil.rmtree(folder, ignore_errors=True)
        return trainer
    return run


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, dm: GoldDataModule) -> None:
    """One shuffled epoch of the plain loop: batches gathered straight from the dataset."""
    data = dm.datasets["train"]
    model.train()
    for idx in torch.randperm(len(data)).split(dm.batch_size):
        x, y, *_ = data.__getitems__(idx)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()


def hand_fit(cfg: BenchConfig, dm: GoldDataModule, epochs: int, validate: bool = True, seed: int = 0,
             compile_model: bool = False) -> Callable[[], float]:
    """Return a thunk: the hand-written loop on the same ``ResidualLSTM`` and tensors, with a
    validation pass (loss and MAE in price units) per epoch like the Lightning side."""
    def run() -> float:
        torch.manual_seed(seed)
        model = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        net = torch.compile(model) if compile_model else model
        mae = torch.zeros(())
        for _ in range(epochs):
            train_epoch(net, opt, dm)
            if validate:
                model.eval()
                with torch.no_grad():
                    for idx in torch.arange(len(dm.datasets["val"])).split(dm.batch_size):
                        x, y, anchor, _ = dm.datasets["val"].__getitems__(idx)
                        pred = net(x)
                        F.mse_loss(pred, y)
                        mae += (dm.inverse_transform(pred, anchor) - dm.inverse_transform(y, anchor)).abs().sum()
        return float(mae)
    return run


# ---- items --------------------------------------------------------------------------------------
def item_lightning_vs_loop(cfg: BenchConfig, dm: GoldDataModule, epochs: int, repeats: int) -> dict[str, Any]:
    runs = interleave({"lightning": lightning_fit(cfg, dm, epochs), "loop": hand_fit(cfg, dm, epochs)},
                      repeats, cfg.warmup)
    out = compare(runs, "lightning", "loop", cfg.clock)
    out.update(days=len(dm._raw["features"]), epochs=epochs, train_windows=len(dm.datasets["train"]))
    return out


def item_grad_norms(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    runs = interleave({"on": lightning_fit(cfg, dm, cfg.epochs, log_every=1),
                       "off": lightning_fit(cfg, dm, cfg.epochs, NoGradNorms, log_every=1)},
                      cfg.repeats, cfg.warmup)
    out = compare(runs, "on", "off", cfg.clock)
    out["overhead"] = out["ratio"] - 1
    return out


def diagnostic_callbacks() -> dict[str, type]:
    """Find the diagnostics callbacks (issue 4) by name, imported lazily: absent ones are skipped."""
    import importlib

    found = {}
    for module, name in (("lstm_grad.callbacks", "GradientMonitor"), ("lstm_grad.diagnostics", "GradientMonitor"),
                         ("lstm_grad.callbacks", "TimeGradientProbe"), ("lstm_grad.diagnostics", "TimeGradientProbe")):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        found.setdefault(name, cls)
    return found


def item_diagnostics(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    classes = diagnostic_callbacks()
    if not classes:
        return {"callbacks": [], "overhead": None, "note": "no diagnostics callbacks in lstm_grad yet"}
    # per-run costs (the first probe, the one figure at the end) are spread over a few epochs, as in
    # any real run; a 1-epoch fit would charge them all to one epoch
    epochs = max(cfg.epochs, 3)
    runs = interleave({"on": lightning_fit(cfg, dm, epochs, callbacks=lambda: [c() for c in classes.values()]),
                       "off": lightning_fit(cfg, dm, epochs)}, cfg.repeats, cfg.warmup)
    out = compare(runs, "on", "off", cfg.clock)
    out.update(callbacks=sorted(classes), overhead=out["ratio"] - 1, epochs=epochs)
    return out


def gemm_program(shapes: list[tuple[int, int, int, int]]) -> Callable[[], None]:
    """Return a thunk running the GEMMs of one training batch (preallocated, ``torch.mm(out=)``)."""
    ops = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n), count) for m, k, n, count in shapes]

    def run() -> None:
        for a, b, c, count in ops:
            for _ in range(count):
                torch.mm(a, b, out=c)
    return run


def item_gemm(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    """Achieved training GFLOP/s (gate matmuls) of the plain loop's epoch vs the same GEMMs alone."""
    n_train = len(dm.datasets["train"])
    train_flops = 3 * lstm_gate_flops(dm.n_features, cfg.hidden_sizes, dm.window) * n_train
    shapes = gemm_shapes(dm.n_features, cfg.hidden_sizes, dm.window, dm.batch_size)
    batches = math.ceil(n_train / dm.batch_size)
    gemm_batch = gemm_program(shapes)
    torch.manual_seed(0)
    model = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # the GEMM side runs as many full batches as the epoch has (the last epoch batch may be partial)
    runs = interleave({"train": lambda: train_epoch(model, opt, dm),
                       "gemm": lambda: [gemm_batch() for _ in range(batches)]}, cfg.repeats, cfg.warmup)
    # the ceiling is the best of many runs of the exact GEMM sequence (a run is ~1/10 of an epoch, so
    # extra rounds are cheap): a single round's rate swung 128 .. 186 GFLOP/s between runs of the bench
    ceiling_runs = interleave({"gemm": lambda: [gemm_batch() for _ in range(batches)]},
                              max(10, 3 * cfg.repeats), warmup=0)["gemm"]
    gemm_total = gemm_flops(shapes) * batches
    achieved = [train_flops / s / 1e9 for s in pick(runs["train"], cfg.clock)]
    ceiling = [gemm_total / s / 1e9 for s in pick(runs["gemm"] + ceiling_runs, cfg.clock)]
    fractions = [a / max(ceiling) for a in achieved]
    return {"achieved_gflops": summary(achieved), "ceiling_gflops": summary(ceiling),
            "fraction": max(achieved) / max(ceiling),
            "pair_fractions": summary(fractions), "train_gflop_per_epoch": train_flops / 1e9,
            "formula": "3 * sum_layers 2*T*4H*(I+H) per window; fraction = best epoch rate / best GEMM rate",
            "clock": cfg.clock}


def item_data(cfg: BenchConfig) -> dict[str, Any]:
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
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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
    module = LSTMForecaster(n_features=dm.n_features, hidden_sizes=cfg.hidden_sizes, horizon=dm.horizon)
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


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the items in ``cfg.items``; return the JSON dict (headline keys + ``items`` + ``spread``)."""
    quiet()
    result: dict[str, Any] = {"machine": machine_note(), "items": {}, "spread": {}}
    items, spread = result["items"], result["spread"]
    dm = make_data(cfg, cfg.last_n_days)
    if 1 in cfg.items:
        items["lightning_vs_loop"] = item_lightning_vs_loop(cfg, dm, cfg.epochs, cfg.repeats)
        result["lightning_vs_loop"] = items["lightning_vs_loop"]["ratio"]
        spread["lightning_vs_loop"] = items["lightning_vs_loop"]["pair_ratios"]
        log(f"1 lightning / loop ({len(dm.datasets['train'])} windows): {result['lightning_vs_loop']:.4f}")
        if not cfg.quick:
            full = make_data(cfg, cfg.full_days)
            items["lightning_vs_loop_full"] = item_lightning_vs_loop(cfg, full, 1, cfg.full_repeats)
            result["lightning_vs_loop_full"] = items["lightning_vs_loop_full"]["ratio"]
            spread["lightning_vs_loop_full"] = items["lightning_vs_loop_full"]["pair_ratios"]
            log(f"1 lightning / loop, full series: {result['lightning_vs_loop_full']:.4f}")
    for number, name, key, measure in ((2, "grad_norms", "grad_norm_overhead", item_grad_norms),
                                       (3, "diagnostics", "diagnostics_overhead", item_diagnostics)):
        if number in cfg.items:
            items[name] = measure(cfg, dm)
            result[key] = items[name]["overhead"]
            if "pair_ratios" in items[name]:
                spread[key] = {k: items[name]["pair_ratios"][k] - 1 for k in ("min", "median", "max")}
            log(f"{number} {key}: {result[key]}")
    if 4 in cfg.items:
        items["gemm"] = item_gemm(cfg, dm)
        result["gemm_fraction"] = items["gemm"]["fraction"]
        spread["gemm_fraction"] = items["gemm"]["pair_fractions"]
        log(f"4 GFLOP/s {items['gemm']['achieved_gflops']['median']:.1f} of "
            f"{items['gemm']['ceiling_gflops']['median']:.1f}: {result['gemm_fraction']:.3f}")
    if 5 in cfg.items:
        items["data"] = item_data(cfg)
        result["data_setup_s"] = items["data"]["setup_s"]["median"]
        spread["data_setup_s"] = items["data"]["setup_s"]
        log(f"5 data set-up {result['data_setup_s']:.3f} s, {items['data']['copies_of_series']:.2f} series copies")
    if 6 in cfg.items:
        items["scaling"] = item_scaling(cfg)
        result["scaling_exponent_days"] = items["scaling"]["exponent_days"]
        result["scaling_exponent_window"] = items["scaling"]["exponent_window"]
        log(f"6 exponents: days {result['scaling_exponent_days']:.3f}, window {result['scaling_exponent_window']:.3f}")
    if 7 in cfg.items:
        items["predict"] = item_predict(cfg, make_data(cfg, cfg.full_days))
        result["predict_windows_per_s"] = items["predict"]["windows_per_s"]["median"]
        log(f"7 predict {result['predict_windows_per_s']:.0f} windows/s")
    if 8 in cfg.items:
        items["compile"] = item_compile(cfg, dm)
        result["compile_vs_eager"] = items["compile"].get("ratio")
        log(f"8 torch.compile / eager: {result['compile_vs_eager']}; {items['compile'].get('error', '')}")
    if 9 in cfg.items:
        from bench_peers import item_darts  # imports lstm_grad's callbacks; darts itself only if installed

        items["darts"] = item_darts(cfg, dm)
        if "ratio" in items["darts"]:
            result["darts_ratio"] = items["darts"]["ratio"]
            spread["darts_ratio"] = items["darts"]["pair_ratios"]
        log(f"9 lstm_grad / darts epoch time: {result.get('darts_ratio', items['darts'].get('skipped'))}")
    result["machine"]["loadavg_end"] = machine_note()["loadavg"]
    return result
