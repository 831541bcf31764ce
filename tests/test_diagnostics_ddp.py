"""A real 2-process DDP run (CPU, gloo): every rank computes the same norms, and they are logged once."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import copy, json, math, sys
    from pathlib import Path
    import lightning.pytorch as pl, torch, torch.distributed as dist
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy
    from lstm_grad.diagnostics import GradientMonitor, TimeGradientProbe
    from lstm_grad.data import GoldDataModule
    from lstm_grad.module import LSTMForecaster

    class AllReducedReference(pl.Callback):
        """Each rank: autograd on a float64 copy of its own batch, then an explicit all_reduce mean."""
        def __init__(self):
            self.expected, self.seen = {{}}, {{}}
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.frozen, self.batch = copy.deepcopy(module.model).double(), [t.double() for t in batch]
        def on_before_optimizer_step(self, trainer, module, optimizer):
            x, y, *_ = self.batch
            grads = torch.autograd.grad(torch.nn.functional.mse_loss(self.frozen(x), y), list(self.frozen.parameters()))
            squares = {{}}
            for (name, _), grad in zip(self.frozen.named_parameters(), grads):
                dist.all_reduce(grad)
                layer = name.split(".")[0]
                squares[layer] = squares.get(layer, 0.0) + float((grad / dist.get_world_size()).square().sum())
            squares["total"] = sum(squares.values())
            step = trainer.global_step
            self.expected[step] = {{k: math.sqrt(v) for k, v in squares.items()}}
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            step = trainer.global_step - 1  # the module's norms are read in its clipping hook, after the hook above
            monitor = next(c for c in trainer.callbacks if isinstance(c, GradientMonitor))
            if monitor.tracker.last_step == step:
                self.seen[step] = dict(monitor.tracker.last_norms)

    out = Path(sys.argv[1])  # argv[2]: the price CSV, written once by the test (not by both ranks at once)
    pl.seed_everything(0)
    data = GoldDataModule(source=sys.argv[2], last_n_days=None, window=12, batch_size=8, split=(0.6, 0.2, 0.2))
    model = LSTMForecaster(n_features=data.n_features, hidden_sizes=(6, 4), residual=True, init="orthogonal", dropout=0.0, horizon=data.horizon)
    reference = AllReducedReference()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                         max_epochs=1, limit_train_batches=4, limit_val_batches=1, log_every_n_steps=1,
                         logger=CSVLogger(out, name="csv", version=0), num_sanity_val_steps=0,
                         callbacks=[reference, GradientMonitor(), TimeGradientProbe(probe_size=8)],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    (out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps({{"expected": reference.expected, "seen": reference.seen}}))
''')


@pytest.mark.slow
def test_ddp_ranks_agree_with_all_reduced_autograd_and_log_once(tmp_path, synthetic_csv):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(synthetic_csv(tmp_path))],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen"] == ranks[1]["seen"] and len(ranks[0]["seen"]) == 4  # identical on both ranks
    for step, expected in ranks[0]["expected"].items():
        for layer, value in expected.items():
            assert math.isclose(ranks[0]["seen"][step][layer], value, rel_tol=1e-5), (step, layer)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("grad_norm/total")]
    assert sorted(int(row["step"]) for row in rows) == [0, 1, 2, 3]  # one write per step: rank 0 only
    for row in rows:
        assert math.isclose(float(row["grad_norm/total"]), ranks[0]["seen"][row["step"]]["total"], rel_tol=1e-6)
