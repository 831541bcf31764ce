"""GradientMonitor attached to the peers' own models through their own trainer arguments (the ``peers``
extra): darts' ``BlockRNNModel`` and neuralforecast's ``LSTM``, both built on ``pytorch_lightning``.
Logged norms equal an independent recorder of ``p.grad`` before clipping and after the update."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from lstm_grad.diagnostics import GradientMonitor

ptl = pytest.importorskip("pytorch_lightning")


class Recorder(ptl.Callback):
    """Each step: the stepping optimizer's gradient norms per owner module, before Lightning's clipping."""

    def __init__(self) -> None:
        self.pre: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        squares: dict[str, float] = defaultdict(float)
        for name, param in module.named_parameters():
            if id(param) in held and param.grad is not None:
                squares[name.rpartition(".")[0]] += float(param.grad.double().square().sum())
        self.pre.append({**{k: math.sqrt(v) for k, v in squares.items()}, "total": math.sqrt(sum(squares.values()))})


class Memory(ptl.loggers.logger.Logger):
    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, dict[int, float]] = defaultdict(dict)

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        for key, value in metrics.items():
            self.values[key][step] = float(value)


def trainer_kwargs(logger: Memory, recorder: Recorder) -> dict:
    return {"callbacks": [GradientMonitor(), recorder], "logger": logger, "log_every_n_steps": 1,
            "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False}


def check(logger: Memory, recorder: Recorder, rnn: str) -> int:
    totals = logger.values["grad_norm/total"]
    assert len(totals) == len(recorder.pre) >= 3
    for step, expected in zip(sorted(totals), recorder.pre):
        assert math.isclose(totals[step], expected["total"], rel_tol=1e-5)
        layers = [v for k, v in logger.values.items() if k.startswith(f"grad_norm/{rnn}.l")]
        assert len(layers) == 2  # one group per layer of the 2-layer nn.LSTM
        by_layer = math.sqrt(sum(layer[step] ** 2 for layer in layers))
        assert math.isclose(by_layer, expected[rnn], rel_tol=1e-5)
    return len(totals)


def test_darts_block_rnn_logs_true_per_layer_norms():
    darts = pytest.importorskip("darts")
    from darts.models import BlockRNNModel

    values = np.cumsum(np.random.default_rng(0).normal(size=120)).astype(np.float32)
    logger, recorder = Memory(), Recorder()
    model = BlockRNNModel(input_chunk_length=12, output_chunk_length=1, model="LSTM", hidden_dim=8, n_rnn_layers=2,
                          n_epochs=1, batch_size=32, random_state=0, pl_trainer_kwargs=trainer_kwargs(logger, recorder))
    model.fit(darts.TimeSeries.from_values(values))
    assert check(logger, recorder, "rnn") == len(recorder.pre) >= 3  # every optimizer step compared


def test_neuralforecast_lstm_logs_true_per_layer_norms():
    pytest.importorskip("neuralforecast")
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM

    frame = pd.DataFrame({"unique_id": "gold", "ds": pd.bdate_range("2020-01-01", periods=120),
                          "y": np.cumsum(np.random.default_rng(0).normal(size=120))})
    logger, recorder = Memory(), Recorder()
    model = LSTM(h=1, input_size=12, encoder_n_layers=2, encoder_hidden_size=8, decoder_hidden_size=8, max_steps=4,
                 batch_size=4, random_seed=0, **trainer_kwargs(logger, recorder))
    forecaster = NeuralForecast(models=[model], freq="B")
    forecaster.fit(frame)
    fitted = forecaster.models[0].trainer_kwargs  # NeuralForecast trains deep copies of the models it is given
    logger, recorder = fitted["logger"], fitted["callbacks"][1]
    rnn = next(k.split("/", 1)[1].rsplit(".", 1)[0] for k in logger.values if k.endswith(".l0"))
    assert check(logger, recorder, rnn) == len(recorder.pre) == 4  # max_steps=4: every step compared
