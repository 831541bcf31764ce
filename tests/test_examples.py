"""The three examples run at tiny sizes, and the tags they log come back from their event files."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {"epochs": 2, "window": 20, "days": 400, "batches": 6}


def run_example(name: str, **sizes) -> str:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(**sizes)


def read_back(run_dir: str) -> tuple[dict[str, dict[int, float]], list[str]]:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    return scalars, events.Tags()["images"]


def check_norms(scalars: dict[str, dict[int, float]], groups: list[str], clip: float, steps: list[int]) -> None:
    """Every group is logged on the logged steps, the groups' squares add up to the total (each
    parameter counted once), and the post-clip total respects the clip."""
    for group in groups:
        assert sorted(scalars[f"grad_norm/{group}"]) == steps, group
    assert {t.split("/", 1)[1] for t in scalars if t.startswith("grad_norm/")} == {*groups, "total", "total_clipped"}
    for step in steps:
        squares = sum(scalars[f"grad_norm/{g}"][step] ** 2 for g in groups)
        total, after = scalars["grad_norm/total"][step], scalars["grad_norm/total_clipped"][step]
        assert math.isclose(math.sqrt(squares), total, rel_tol=1e-5), step
        assert math.isclose(after, min(total, clip), rel_tol=1e-4)
        assert scalars["grad_health/clipped"][step] == float(total > clip)


def test_gru_forecaster_example(tmp_path):
    run = run_example("gru_forecaster", **TINY, hidden=8, log_dir=str(tmp_path))
    scalars, images = read_back(run)
    check_norms(scalars, ["gru.l0", "gru.l1", "head"], 1.0, [4, 9])
    assert sorted(scalars["grad_health/clip_rate"]) == [4, 9]
    assert sorted(scalars["grad_time/reach"]) == [0, 6, 12] and "grad_time/lag_10" in scalars
    assert sorted(scalars["grad_act/gru"]) == [0, 6, 12]  # one 2-layer nn.GRU module: its output gradient
    assert "grad_time/heatmap" in images


def test_transformer_encoder_example(tmp_path):
    run = run_example("transformer_encoder", **TINY, d_model=8, log_dir=str(tmp_path))
    scalars, images = read_back(run)
    check_norms(scalars, ["embed", "position", "blocks.0", "blocks.1", "head"], 1.0, [4, 9])
    assert sorted(scalars["grad_act/blocks.0"]) == sorted(scalars["grad_act/blocks.1"]) == [0, 6, 12]
    assert "grad_time/heatmap" in images


def test_plain_pytorch_loop_example(tmp_path):
    run = run_example("plain_pytorch_loop", **TINY, hidden=8, clip=0.05, log_dir=str(tmp_path))
    scalars, _ = read_back(run)
    check_norms(scalars, ["net.l0", "net.l1", "head"], 0.05, [0, 5, 10])
    assert all(v == 0.0 for v in scalars["grad_health/nonfinite"].values())


def test_fabric_loop_example(tmp_path):
    run = run_example("fabric_loop", **TINY, hidden=8, clip=0.05, log_dir=str(tmp_path))
    scalars, _ = read_back(run)
    check_norms(scalars, ["net.l0", "net.l1", "head"], 0.05, [0, 5, 10])
    assert sorted(scalars["train/loss"]) == [0, 5, 10]


@pytest.mark.parametrize("name", ["gru_forecaster", "transformer_encoder", "plain_pytorch_loop", "fabric_loop"])
def test_examples_import_nothing_of_ours_but_the_data_and_the_diagnostics(name):
    text = (EXAMPLES / f"{name}.py").read_text()
    ours = sorted({line.split()[1] for line in text.splitlines() if line.startswith("from lstm_grad")})
    assert set(ours) <= {"lstm_grad", "lstm_grad.data", "lstm_grad.diagnostics"}, ours
