"""The real ``tensorboard`` server serves the same ``grad_norm/lstm_0`` values as our event file.

HTTP API of the installed tensorboard (``tensorboard/plugins/scalar/scalars_plugin.py``):
``/data/plugin/scalars/tags`` -> ``{run: {tag: {...}}}`` and
``/data/plugin/scalars/scalars?run=RUN&tag=TAG`` -> ``[[wall_time, step, value], ...]``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lstm_grad.data import GoldDataModule
from lstm_grad.module import LSTMForecaster
from test_module import synthetic_csv

TAG = "grad_norm/lstm_0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_http_api_serves_the_event_file_values(tmp_path):
    pl.seed_everything(0)
    data = GoldDataModule(source=str(synthetic_csv(tmp_path)), last_n_days=None, window=8, batch_size=16)
    model = LSTMForecaster(n_features=data.n_features, hidden_sizes=(6, 4), dropout=0.0, horizon=data.horizon)
    logger = TensorBoardLogger(tmp_path / "runs", name="tb", default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    logger.experiment.flush()
    run_dir = Path(logger.log_dir)
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    expected = [(e.step, e.value) for e in accumulator.Scalars(TAG)]
    assert len(expected) == trainer.global_step > 5

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(tmp_path / "runs"),
                               "--port", str(port), "--host", "127.0.0.1", "--load_fast", "false",
                               "--reload_interval", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    run = f"{run_dir.parent.name}/{run_dir.name}"  # tb/version_0, relative to --logdir
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()[-2000:]
            try:
                if TAG in get_json(f"{base}/data/plugin/scalars/tags").get(run, {}):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, "tensorboard never served the run"
            time.sleep(0.5)
        query = urllib.parse.urlencode({"run": run, "tag": TAG})
        served = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert [(step, value) for _, step, value in served] == expected  # float32 values, bit for bit
    assert server.returncode is not None  # stopped
