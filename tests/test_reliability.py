"""Checkpoint faults: a kill mid-write, a checkpoint made for other settings, weights_only loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lstm_grad.errors import CheckpointError
from lstm_grad.data.sampler import EpochShuffle
from lstm_grad.training.compat import read_checkpoint
from lstm_grad.training.run_dirs import resume_version
from lstm_grad.training.checkpoints import EpochCheckpoint, atomic_torch_save, install
from lstm_grad.data import DataError, GoldDataModule
from lstm_grad.module import LSTMForecaster

KILL_WHILE_WRITING = '''
import os, shutil, signal, sys, torch
{setup}
class Bomb:
    """Pickling this kills the process: a SIGKILL in the middle of writing a checkpoint."""
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
save({{"weights": torch.arange(10_000.0), "bomb": Bomb()}}, sys.argv[1])
'''


def kill_while_saving(path: Path, setup: str, env: dict | None = None) -> int:
    script = KILL_WHILE_WRITING.format(setup=textwrap.dedent(setup))
    return subprocess.run([sys.executable, "-c", script, str(path)], env=env, timeout=120).returncode


def test_sigkill_during_atomic_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"epoch": 3}, path)
    code = kill_while_saving(path, "from lstm_grad.training.checkpoints import atomic_torch_save as save\n"
                                   "from pathlib import Path\n_save = save\nsave = lambda o, p: _save(o, Path(p))")
    assert code == -9
    assert torch.load(path, weights_only=True) == {"epoch": 3}  # the old file, whole
    stale = list(path.parent.glob(".last.ckpt.*.tmp"))
    assert len(stale) == 1  # the half-written temp file, beside the target, never named last.ckpt
    atomic_torch_save({"epoch": 4}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 4}
    assert not list(path.parent.glob("*.tmp"))  # cleaned up by the next save
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second file system for $TMPDIR")
def test_lightning_atomic_save_can_truncate_when_tmpdir_is_another_file_system(tmp_path):
    """The gap we close: fsspec stages Lightning's checkpoint in $TMPDIR and commits with shutil.move,
    which copies across file systems; a kill during that copy leaves a truncated target."""
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 3}, path)
    setup = '''
        import shutil
        from lightning.fabric.utilities.cloud_io import _atomic_save as save
        def copy_half_then_die(src, dst, *args, **kwargs):  # shutil.move -> copy2 -> copyfile
            with open(src, "rb") as source, open(dst, "wb") as target:
                target.write(source.read(200))
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.copyfile = copy_half_then_die
        class Bomb:  # no bomb this time: the kill comes during the commit's copy
            pass
        '''
    script = KILL_WHILE_WRITING.format(setup=textwrap.dedent(setup)).replace('"bomb": Bomb()', '"bomb": None')
    code = subprocess.run([sys.executable, "-c", script, str(path)], timeout=120,
                          env={**os.environ, "TMPDIR": "/dev/shm"}).returncode
    assert code == -9
    assert path.stat().st_size == 200  # truncated: Lightning alone does not guarantee atomicity here
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a Lightning checkpoint"):
        read_checkpoint(path)


@pytest.fixture(scope="module")
def tiny_fit(tiny_forecaster, quiet_trainer):
    """``tiny_fit(folder, hidden=(6, 4), **data) -> (trainer, model, data)``, not fitted yet: 2 batches an
    epoch, ``EpochCheckpoint`` on val/loss with ``last.ckpt`` in ``folder/ck``."""

    def tiny_fit(tmp_path: Path, hidden: tuple[int, ...] = (6, 4),
                 **data_kwargs) -> tuple[pl.Trainer, LSTMForecaster, GoldDataModule]:
        data, model = tiny_forecaster(tmp_path, hidden_sizes=hidden, **data_kwargs)
        trainer = install(quiet_trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, limit_train_batches=2,
                                        callbacks=[EpochCheckpoint(dirpath=tmp_path / "ck", save_last=True,
                                                                   monitor="val/loss")]))
        return trainer, model, data

    return tiny_fit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_fit) -> Path:
    folder = tmp_path_factory.mktemp("mismatch")
    trainer, model, data = tiny_fit(folder)
    trainer.fit(model, datamodule=data)
    return folder / "ck" / "last.ckpt"


@pytest.mark.parametrize("change, message", [
    ({"window": 12}, r"checkpoint was made with data.window=8 but this run has data.window=12"),
    ({"horizon": 3}, r"checkpoint was made with data.horizon=1 but this run has data.horizon=3"),
    ({"target_mode": "log_return"}, r"data.target_mode='level' but this run has data.target_mode='log_return'"),
    ({"features": ["price", "log_return:price"]}, r"checkpoint was made with features \['price', 'log_return:price', "),
    ({"features": ["price", "log_return:price", "volatility:price:5", "momentum:price:5", "momentum:price:20"]},
     r"features .* but this run has \[.*'momentum:price:20'\]"),
])
def test_checkpoint_for_other_data_gives_one_clear_error(tmp_path, checkpoint, change, message, tiny_fit):
    trainer, model, data = tiny_fit(tmp_path, **change)
    with pytest.raises(CheckpointError, match=message) as caught:
        trainer.fit(model, datamodule=data, ckpt_path=checkpoint, weights_only=True)
    assert "\n" not in str(caught.value) and isinstance(caught.value, ValueError)


def test_checkpoint_for_other_layer_sizes_gives_one_clear_error(tmp_path, checkpoint, tiny_fit):
    trainer, model, data = tiny_fit(tmp_path, hidden=(6, 6))
    with pytest.raises(CheckpointError, match=r"model.hidden_sizes=\(6, 4\) but this run has model.hidden_sizes=\(6, 6\)"):
        trainer.fit(model, datamodule=data, ckpt_path=checkpoint, weights_only=True)


def test_weight_shape_check_is_the_last_line_of_defence(checkpoint):
    saved = torch.load(checkpoint, weights_only=True)
    saved.pop("GoldDataModule")
    saved["hyper_parameters"] = {}
    model = LSTMForecaster(n_features=3, hidden_sizes=(6, 4), residual=True, init="orthogonal", dropout=0.0)
    from lstm_grad.training.compat import check_compatible

    with pytest.raises(CheckpointError, match=r"weight 'model.lstm_0.weight_ih_l0' has shape \(24, 5\) but this "
                                              r"model's has \(24, 3\)"):
        check_compatible(saved, model)


def test_checkpoints_load_with_weights_only_and_resume_exactly(tmp_path, checkpoint, tiny_fit):
    saved = torch.load(checkpoint, weights_only=True)  # no pickled classes: loads under weights_only
    assert saved["callbacks"]["RngState"] == {"base_seed": 0}
    trainer, model, data = tiny_fit(tmp_path)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model, datamodule=data, ckpt_path=checkpoint, weights_only=True)
    assert trainer.current_epoch == 2 and trainer.global_step == 4


def test_data_module_refuses_other_settings_even_without_the_model(checkpoint):
    data = GoldDataModule(source="embedded", window=12)
    with pytest.raises(DataError, match="data.window=8"):
        data.load_state_dict(torch.load(checkpoint, weights_only=True)["GoldDataModule"])


def test_last_ckpt_is_written_every_epoch_even_without_improvement(tmp_path, tiny_fit):
    trainer, model, data = tiny_fit(tmp_path)
    model.hparams.lr = 0.0  # val/loss never improves after epoch 0
    trainer.fit_loop.max_epochs = 3
    trainer.fit(model, datamodule=data)
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert [p.name for p in (tmp_path / "ck").glob("epoch=*")] == ["epoch=0-step=2.ckpt"]  # best stays epoch 0


def test_resume_version_and_unreadable_files(tmp_path):
    for version, mtime in ((0, 100), (2, 300), (1, 200)):
        last = tmp_path / "runs" / "name" / f"version_{version}" / "checkpoints" / "last.ckpt"
        atomic_torch_save({}, last)
        os.utime(last, (mtime, mtime))
    (tmp_path / "runs" / "name" / "version_3").mkdir()  # a run killed before its first checkpoint
    assert resume_version(tmp_path / "runs", "name") == 2
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.ckpt: cannot read the checkpoint"):
        read_checkpoint(tmp_path / "empty.ckpt")


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    a, b = EpochShuffle(50, seed=7), EpochShuffle(50, seed=7)
    torch.manual_seed(123)
    first = list(a)
    torch.manual_seed(999)  # the global generator plays no part
    assert list(b) == first and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first
