"""Items 1-3 of ``python -m benchmarks.bench``: what ``Trainer.fit`` adds over a hand loop, and what
the diagnostics cost inside a run (time in their own hooks, ``HookClock``). Each returns a dict for the JSON."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.config import BenchConfig
from benchmarks.fits import CLIP, PROBE_EVERY, hand_fit, lightning_fit
from benchmarks.monitor import UserLSTM
from benchmarks.same_work import same_work_fit
from benchmarks.stats import HookClock, compare, overridden_hooks, summary, timed
from lstm_grad import GradientMonitor, TimeGradientProbe
from lstm_grad.data import GoldDataModule
from lstm_grad.fit import FitCLI
from lstm_grad.model import ResidualLSTM


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
    TimeGradientProbe on) vs the hand loop doing the same work (``benchmarks.same_work``), interleaved
    after a warm-up round; the bare hand loop (training and a validation MAE only,
    ``benchmarks.fits.hand_fit``) runs beside them for reference.

    The headline ``ratio`` is accounted per round: ``1 + (added_fit - added_loop) / wall_loop``,
    where ``added`` = wall - time in the network's forward and backward (``ComputeClock``). The
    kernels' own time swings 10-20 % between identical runs on this CPU (profiled: ``torch.lstm``
    2.13 s in one 3-epoch fit, 2.59 s in the next), which a ratio of two wall times reads as
    overhead; ``wall_ratio`` keeps the plain ratio of medians for reference. ``bare_loop_ratio``
    is the same accounting against the bare loop: what Lightning, the logging, the metrics, the
    checkpoints and the diagnostics add together.
    """
    probe = lambda: TimeGradientProbe(every_n_epochs=PROBE_EVERY)  # noqa: E731  as the CLI runs it
    variants = {"lightning": lightning_fit(cfg, dm, epochs, callbacks=lambda: [GradientMonitor(), probe()]),
                "loop": same_work_fit(cfg, dm, epochs), "bare_loop": hand_fit(cfg, dm, epochs)}
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
    for base, key in (("bare_loop", "bare_loop_pair_ratios"), ("loop", "pair_ratios")):
        pairs = [1 + (a - b) / t.wall for a, b, t in zip(added["lightning"], added[base], runs[base])]
        out[key] = summary(pairs)
    out["ratio"] = out["pair_ratios"]["median"]
    out["bare_loop_ratio"] = out["bare_loop_pair_ratios"]["median"]
    out["bare_loop"] = summary([getattr(t, cfg.clock) for t in runs["bare_loop"]])
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
    runs = []
    for round_ in range(cfg.warmup + max(3, cfg.repeats)):
        pl.seed_everything(round_, verbose=False)
        monitor, clock = GradientMonitor(), HookClock()
        clock.wrap(monitor, "monitor", [*overridden_hooks(monitor, pl.Callback), "_after_clip"])
        folder = tempfile.mkdtemp(prefix="bench_user_")
        trainer = pl.Trainer(max_epochs=cfg.epochs, logger=TensorBoardLogger(folder, name="bench"),
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                             gradient_clip_val=CLIP, limit_val_batches=0, enable_checkpointing=False,
                             callbacks=[monitor])
        result = hook_shares(lambda: trainer.fit(UserLSTM(dm.n_features), datamodule=dm), clock, time.perf_counter)
        shutil.rmtree(folder, ignore_errors=True)
        steps = clock.calls["monitor._after_clip"]  # one per optimizer step, every one logged here
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
    runs = []
    for round_ in range(max(1, cfg.repeats // 2)):
        folder = tempfile.mkdtemp(prefix="bench_default_")
        cli = FitCLI(args=["--trainer.logger.init_args.save_dir", folder, "--trainer.enable_progress_bar", "false",
                           *cfg.extra.get("fit_args", [])], run=False)
        clock = HookClock()
        for callback in cli.trainer.callbacks:
            if isinstance(callback, (GradientMonitor, TimeGradientProbe)):
                extra = ["_after_clip"] if isinstance(callback, GradientMonitor) else []
                clock.wrap(callback, type(callback).__name__, [*overridden_hooks(callback, pl.Callback), *extra])
        result = hook_shares(lambda: cli.trainer.fit(cli.model, datamodule=cli.datamodule), clock, time.perf_counter)
        result["epochs"] = cli.trainer.current_epoch
        shutil.rmtree(folder, ignore_errors=True)
        runs.append(result)
    return accounted(runs)
