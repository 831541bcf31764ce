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
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from bench import (BenchConfig, HookClock, compare, fit_exponent, gemm_flops, gemm_shapes, interleave,
                   lstm_gate_flops, machine_note, overridden_hooks, pick, summary, tensor_bytes, timed)
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
class ComputeClock:
    """Seconds spent inside ``ResidualLSTM.forward`` and ``Tensor.backward`` while active: the
    network's own work, which ``Trainer.fit`` and the hand loop share. What a side adds around it is
    its wall time minus this. The time probe's input-gradient pass uses ``torch.autograd.grad`` and
    is not counted; its forward on 8 windows is (a fraction of a per-cent of an epoch)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "ComputeClock":
        self._forward, self._backward = ResidualLSTM.forward, torch.Tensor.backward
        clock, forward, backward = self, self._forward, self._backward

        def timed_forward(net: ResidualLSTM, x: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            try:
                return forward(net, x)
            finally:
                clock.seconds += time.perf_counter() - start

        def timed_backward(tensor: torch.Tensor, gradient: Any = None, retain_graph: Any = None,
                           create_graph: bool = False, inputs: Any = None) -> None:
            start = time.perf_counter()
            try:
                backward(tensor, gradient, retain_graph, create_graph, inputs)
            finally:
                clock.seconds += time.perf_counter() - start

        ResidualLSTM.forward, torch.Tensor.backward = timed_forward, timed_backward
        return self

    def __exit__(self, *exc: object) -> None:
        ResidualLSTM.forward, torch.Tensor.backward = self._forward, self._backward


def item_lightning_vs_loop(cfg: BenchConfig, dm: GoldDataModule, epochs: int, repeats: int) -> dict[str, Any]:
    """``Trainer.fit`` (TensorBoard, price metrics, a checkpoint per epoch, GradientMonitor and
    TimeGradientProbe on) vs the hand loop, interleaved after a warm-up round.

    The headline ``ratio`` is accounted per round: ``1 + (added_fit - added_loop) / wall_loop``,
    where ``added`` = wall - time in the network's forward and backward (``ComputeClock``). The
    kernels' own time swings 10-20 % between identical runs on this CPU (profiled: ``torch.lstm``
    2.13 s in one 3-epoch fit, 2.59 s in the next), which a ratio of two wall times reads as
    overhead; ``wall_ratio`` keeps the plain ratio of medians for reference.
    """
    from lstm_grad import GradientMonitor, TimeGradientProbe

    variants = {"lightning": lightning_fit(cfg, dm, epochs, callbacks=lambda: [GradientMonitor(), TimeGradientProbe()]),
                "loop": hand_fit(cfg, dm, epochs)}
    for _ in range(cfg.warmup):
        for fn in variants.values():
            fn()
    runs: dict[str, list[Any]] = {name: [] for name in variants}
    added: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            with ComputeClock() as compute:
                timing, _ = timed(fn)
            runs[name].append(timing)
            added[name].append(timing.wall - compute.seconds)
    out = compare(runs, "lightning", "loop", cfg.clock)
    out["wall_ratio"] = out.pop("ratio")
    out["wall_pair_ratios"] = out.pop("pair_ratios")
    pairs = [1 + (a - b) / t.wall for a, b, t in zip(added["lightning"], added["loop"], runs["loop"])]
    out["pair_ratios"] = summary(pairs)
    out["ratio"] = out["pair_ratios"]["median"]
    out["added_s"] = {name: summary(values) for name, values in added.items()}
    out.update(days=len(dm._raw["features"]), epochs=epochs, train_windows=len(dm.datasets["train"]))
    return out


def hook_shares(fit: Callable[[], None], clock: HookClock, timer: Callable[[], float]) -> dict[str, Any]:
    """Run one fit with ``clock`` already wrapped around the hooks; return seconds and shares."""
    start = timer()
    fit()
    total = timer() - start
    return {"fit_s": total, "diagnostics_s": clock.total(), "share": clock.total() / total,
            "by_hook_s": dict(clock.seconds), "calls": dict(clock.calls)}


def accounted(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise repeated hook-time accountings: the headline is the median share."""
    shares = [r["share"] for r in runs]
    return {"share": summary(shares), "overhead": statistics.median(shares), "runs": runs,
            "method": "time inside the diagnostics' own hooks / wall time of the whole fit, same run"}


def item_monitor_user_model(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    """Any-model monitor on a user's model (3-layer ``nn.LSTM`` + head), every step logged:
    time inside ``GradientMonitor``'s hooks (norm pass, post-clip pass, sync, logger writes, alarms)
    as a share of the fit. ``log_every_n_steps=1`` makes every step a logged step, so the share is
    the cost of one logged step as a fraction of one training step."""
    from bench_monitor import UserLSTM

    from lstm_grad import GradientMonitor

    runs = []
    for round_ in range(cfg.warmup + max(3, cfg.repeats)):
        pl.seed_everything(round_, verbose=False)
        monitor, clock = GradientMonitor(), HookClock()
        clock.wrap(monitor, "monitor", [*overridden_hooks(monitor, pl.Callback), "_finish"])
        folder = tempfile.mkdtemp(prefix="bench_user_")
        trainer = pl.Trainer(max_epochs=cfg.epochs, logger=TensorBoardLogger(folder, name="bench"),
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                             gradient_clip_val=CLIP, limit_val_batches=0, enable_checkpointing=False,
                             callbacks=[monitor])
        result = hook_shares(lambda: trainer.fit(UserLSTM(dm.n_features), datamodule=dm), clock, time.perf_counter)
        shutil.rmtree(folder, ignore_errors=True)
        steps = clock.calls["monitor._finish"]  # one per optimizer step, every one logged here
        # the measure: the cost of one logged step as a share of one epoch
        result["per_logged_step_of_epoch"] = (result["diagnostics_s"] / steps) / (result["fit_s"] / cfg.epochs)
        if round_ >= cfg.warmup:
            runs.append(result)
    out = accounted(runs)
    out["share_of_step"] = out.pop("share")  # log_every_n_steps=1: time in the monitor / time training
    out["share"] = summary([r["per_logged_step_of_epoch"] for r in runs])
    out["overhead"] = out["share"]["median"]
    out["method"] = ("time inside GradientMonitor's hooks per logged step / epoch wall time (log_every_n_steps=1, "
                     "so share_of_step is the same cost over the whole fit)")
    return out


def item_diagnostics(cfg: BenchConfig, dm: GoldDataModule) -> dict[str, Any]:
    """Default diagnostics in a default ``python -m lstm_grad.fit`` run (its own CLI, defaults, early
    stopping): time inside ``GradientMonitor`` and ``TimeGradientProbe`` hooks and the module's
    gradient-norm hook, as a share of the whole fit (test and predict not included)."""
    from lstm_grad import GradientMonitor, TimeGradientProbe
    from lstm_grad.fit import FitCLI

    runs = []
    for round_ in range(max(1, cfg.repeats // 2)):
        folder = tempfile.mkdtemp(prefix="bench_default_")
        cli = FitCLI(args=["--trainer.logger.init_args.save_dir", folder, "--trainer.enable_progress_bar", "false",
                           *cfg.extra.get("fit_args", [])], run=False)
        clock = HookClock()
        for callback in cli.trainer.callbacks:
            if isinstance(callback, (GradientMonitor, TimeGradientProbe)):
                extra = ["_finish"] if isinstance(callback, GradientMonitor) else []
                clock.wrap(callback, type(callback).__name__, [*overridden_hooks(callback, pl.Callback), *extra])
        clock.wrap(cli.model, "LSTMForecaster", ["on_after_backward"])
        result = hook_shares(lambda: cli.trainer.fit(cli.model, datamodule=cli.datamodule), clock, time.perf_counter)
        result["epochs"] = cli.trainer.current_epoch
        shutil.rmtree(folder, ignore_errors=True)
        runs.append(result)
    return accounted(runs)


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
    for number, name, key, measure in ((2, "monitor_user_model", "monitor_overhead", item_monitor_user_model),
                                       (3, "diagnostics", "diagnostics_overhead", item_diagnostics)):
        if number in cfg.items:
            items[name] = measure(cfg, dm)
            result[key] = items[name]["overhead"]
            spread[key] = items[name]["share"]
            log(f"{number} {key}: {result[key]:.4f} (min {spread[key]['min']:.4f}, max {spread[key]['max']:.4f})")
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
