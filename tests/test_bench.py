"""benchmarks.bench: the pure helpers are right; a tiny run yields the JSON keys. No timed assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.config import BenchConfig
from benchmarks.flops import gemm_flops, gemm_shapes, lstm_gate_flops
from benchmarks.headline import HEADLINE, table, verdict
from benchmarks.stats import Timing, compare, fit_exponent, interleave, summary, tensor_bytes


def test_gate_flops_by_hand():
    # layer 0: 5 -> 3, layer 1: 3 -> 2; window 4; 4 gates; 2 FLOPs (multiply + add) per weight per step
    layer0 = 2 * 4 * (4 * 3) * (5 + 3)  # = 768
    layer1 = 2 * 4 * (4 * 2) * (3 + 2)  # = 320
    assert lstm_gate_flops(5, [3, 2], window=4) == layer0 + layer1 == 1088
    assert lstm_gate_flops(5, [3], window=4, cell="gru") == 2 * 4 * (3 * 3) * (5 + 3)


def test_gate_flops_match_the_weights_of_a_real_lstm():
    # forward gate FLOPs of one window = 2 * T * (number of gate weights); count them on nn.LSTM itself
    from lstm_grad.model import ResidualLSTM

    net = ResidualLSTM(5, hidden_sizes=(8, 6), residual=False)
    weights = sum(getattr(layer, w).numel() for layer in net.recurrent_layers() for w in ("weight_ih_l0", "weight_hh_l0"))
    assert lstm_gate_flops(5, [8, 6], window=7) == 2 * 7 * weights


def test_gemm_shapes_are_three_forwards():
    shapes = gemm_shapes(5, [8, 6], window=7, batch=3)
    assert gemm_flops(shapes) == 3 * 3 * lstm_gate_flops(5, [8, 6], window=7)
    assert gemm_flops([(2, 3, 4, 5)]) == 2 * 2 * 3 * 4 * 5


def test_fit_exponent_on_synthetic_timings():
    xs = [1247, 2500, 5000, 9132]
    assert fit_exponent(xs, [0.002 * x for x in xs]) == pytest.approx(1.0)
    assert fit_exponent(xs, [3e-7 * x ** 1.5 for x in xs]) == pytest.approx(1.5)
    assert fit_exponent([30, 60, 120, 240], [0.7, 1.4, 2.8, 5.6]) == pytest.approx(1.0)


def test_summary_and_compare_use_medians():
    runs = {"a": [Timing(w, w / 2) for w in (2.0, 4.0, 3.0)], "b": [Timing(w, w / 2) for w in (1.0, 2.0, 9.0)]}
    out = compare(runs, "a", "b", "wall")
    assert out["a"]["median"] == 3.0 and out["b"]["median"] == 2.0 and out["ratio"] == 1.5
    assert out["a"]["cpu_median"] == 1.5
    assert out["pair_ratios"]["runs"] == [2.0, 2.0, 3.0 / 9.0]
    assert summary([5, 1, 3]) == {"min": 1.0, "median": 3.0, "max": 5.0, "runs": [5.0, 1.0, 3.0]}


def test_interleave_runs_a_b_a_b_after_warmup():
    order = []
    runs = interleave({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2, warmup=1)
    assert order == ["a", "b"] * 3 and [len(v) for v in runs.values()] == [2, 2]


def test_tensor_bytes_counts_views_once():
    series = torch.zeros(100, 5)
    windows = series.unfold(0, 60, 1).transpose(1, 2)  # 41 windows of 60 rows, a view
    assert tensor_bytes([series, windows, series[10:]]) == 100 * 5 * 4


def test_verdicts_and_table():
    assert {"lightning_vs_loop", "monitor_overhead", "diagnostics_overhead", "gemm_fraction"} <= set(HEADLINE)
    assert verdict("lightning_vs_loop", 1.02) == "ok" and verdict("lightning_vs_loop", 1.2) == "MISS"
    assert verdict("gemm_fraction", 0.95) == "ok" and verdict("gemm_fraction", 0.5) == "MISS"
    assert verdict("monitor_overhead", None) == "n/a"
    text = table({"lightning_vs_loop": 1.01, "spread": {"lightning_vs_loop": summary([1.0, 1.01, 1.02])}})
    assert "| lightning_vs_loop | 1 | 1.01 | 1 / 1.01 / 1.02 | <= 1.03 | ok |" in text


def test_tiny_run_writes_the_json_keys():
    from benchmarks.bench import run_bench

    cfg = BenchConfig(last_n_days=300, window=10, hidden_sizes=(8,), repeats=1, warmup=0, items=(4, 5))
    result = json.loads(json.dumps(run_bench(cfg, log=lambda msg: None), default=str))
    assert result["gemm_fraction"] > 0 and math.isfinite(result["gemm_fraction"])
    gemm = result["items"]["gemm"]
    assert set(gemm["achieved_gflops"]) == {"min", "median", "max", "runs"}
    data = result["items"]["data"]
    assert data["days"] > 9000 and data["copies_of_series"] < 2  # windows are views, not copies
    assert data["bytes_if_windows_copied"] > 0.9 * cfg.window * data["series_bytes"]  # one copy per window


def test_the_hand_loop_of_item_1_writes_what_the_lightning_fit_writes(tmp_path):
    """Item 1 compares ``Trainer.fit`` with a hand loop "doing the same work": the loop writes every scalar
    tag the Lightning fit writes (Lightning's own ``epoch`` and ``hp_metric`` aside) at as many points, the
    same texts (the probe's profiles, the doctor's context and findings, the custom-scalars layout) and the
    heat map, and its checkpoint holds the weights, the optimizer and the calibration."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from benchmarks.fits import lightning_fit, make_data
    from benchmarks.same_work import same_work_fit
    from lstm_grad import GradientMonitor, TimeGradientProbe

    cfg = BenchConfig(last_n_days=400, window=10, hidden_sizes=(8, 6), batch_size=16)
    dm = make_data(cfg, cfg.last_n_days)
    lightning_fit(cfg, dm, 3, callbacks=lambda: [GradientMonitor(), TimeGradientProbe(every_n_epochs=3)],
                  keep_in=tmp_path / "fit")()
    same_work_fit(cfg, dm, 3, keep_in=tmp_path / "loop")()

    def written(folder):
        (run,) = {p.parent for p in folder.rglob("events.out.tfevents.*")}
        events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
        events.Reload()
        tags = events.Tags()
        scalars = {tag: len(events.Scalars(tag)) for tag in tags["scalars"]}
        return scalars, {tag: len(events.Tensors(tag)) for tag in tags["tensors"]}, set(tags["images"])

    fit_scalars, fit_texts, fit_images = written(tmp_path / "fit")
    loop_scalars, loop_texts, loop_images = written(tmp_path / "loop")
    lightning_own = {"epoch", "hp_metric"}
    assert {t: n for t, n in fit_scalars.items() if t not in lightning_own} == loop_scalars
    assert {"grad_norm/total", "grad_update/lstm_0", "gate_sat/lstm_0/forget", "grad_time/reach", "val/rel_mae",
            "val/loss", "train/loss_epoch", "train/loss_step"} <= set(loop_scalars)
    assert loop_texts == fit_texts  # the same texts as many times
    assert set(loop_texts) == {"grad_time/profile_values/text_summary", "doctor/findings/text_summary",
                               "doctor/context/text_summary", "custom_scalars__config__"}
    assert loop_images == fit_images == {"grad_time/heatmap"}
    saved = torch.load(tmp_path / "loop" / "last.ckpt", weights_only=True)
    assert {"state_dict", "optimizer", "calibration"} <= set(saved) and saved["epoch"] == 2


def test_the_timed_adam_variants_make_the_same_first_step():
    from benchmarks.kernels import optimizer_steps

    steps = optimizer_steps((6, 4))
    params = steps["fused"].__self__.param_groups[0]["params"]
    assert all(step.__self__.param_groups[0]["params"] == params for step in steps.values())  # one network
    start = [p.detach().clone() for p in params]
    moved = {}
    for name, step in steps.items():  # each optimizer's first step, from the same weights and gradients
        step()
        moved[name] = [p.detach() - s for p, s in zip(params, start)]
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
    assert steps["fused"].__self__.defaults["fused"] and not steps["foreach"].__self__.defaults["fused"]
    for name in moved:
        for a, b in zip(moved[name], moved["fused"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert all(d.abs().max() > 0 for d in moved["fused"])  # every parameter moved


def test_details_give_item_1s_seconds_beyond_the_network():
    from benchmarks.headline import details

    spread = lambda low, mid, high: {"min": low, "median": mid, "max": high, "runs": [low, mid, high]}  # noqa: E731
    item = {"lightning": spread(3.9, 4.0, 4.1), "loop": spread(3.8, 3.9, 4.0), "ratio": 1.0361,
            "added_s": {"lightning": spread(0.5, 0.55, 0.6), "loop": spread(0.3, 0.4, 0.45)}}
    line = details({"items": {"lightning_vs_loop": item}})
    assert line == ("- lightning_vs_loop: lightning 4 (3.9..4.1); loop 3.9 (3.8..4); ratio 1.0361; seconds per fit "
                    "beyond the network: lightning 0.550 (0.500..0.600), loop 0.400 (0.300..0.450)")


def test_the_soak_paragraph_is_written_from_its_json():
    from benchmarks.soak import paragraph

    rows = [{"epoch": e, "epoch_s": 1.0, "rss_mib": rss, "peak_rss_mib": 700.0} for e, rss in enumerate((590.4, 600.2))]
    results = {"command": "python -m benchmarks.soak --epochs 2", "args": {"epochs": 2, "window": 240,
               "hidden_sizes": [128, 64]}, "machine": {"commit": "c" * 40, "allocator": "glibc: kept",
               "loadavg": [0.5, 0, 0], "loadavg_end": [1.96, 0, 0]},
               "cells": [{"cell": "gru", "rows": rows, "rss_slope_mib_per_epoch": 9.8, "median_epoch_s": 85.61,
                          "peak_rss_mib": 700.0, "days": 9112}]}
    assert paragraph(results) == (
        "Soak (`python -m benchmarks.soak --epochs 2`, 2 epochs per cell, 9112 days, window 240, hidden "
        "[128, 64]; commit `ccccccc`, allocator: glibc: kept; load average 0.50 at the start, 1.96 at the end): "
        "GRU median epoch 85.6 s, RSS 590-600 MiB (slope +9.8 MiB/epoch from epoch 1), peak 700 MiB.")
