"""``LSTMForecaster``: loss, honest metrics in price units, optimiser; gradient norms through the one pipeline.

The gradient diagnostics are not re-implemented here: :meth:`LSTMForecaster.configure_callbacks` attaches
a :class:`~lstm_grad.diagnostics.monitor.GradientMonitor` (the same callback any model uses) when the
trainer has none, so ``grad_norm/lstm_0 ..``, ``grad_norm/total`` and ``grad_norm/total_clipped`` are
the stepping optimizer's unscaled, accumulated gradient before and after clipping, on the steps
Lightning writes logs (``lstm_grad/diagnostics/monitor.py`` cites the hook order it relies on).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_grad.training.compat import check_compatible
from lstm_grad.diagnostics.monitor import GradientMonitor
from lstm_grad.forecaster.metrics import ForecastMetrics
from lstm_grad.forecaster.model import ResidualLSTM

LOSSES = {"mse": F.mse_loss, "huber": F.huber_loss}


class LSTMForecaster(pl.LightningModule):
    """Train ``ResidualLSTM`` on scaled targets; report metrics in price units and gradient norms.

    The defaults ARE the commands' default forecaster (``python -m lstm_grad.fit`` with no flags): the
    recipe's clipped plain stack, chosen on validation data only (``docs/forecasting.md``). The recipe's
    residual network (Step 4: 128, +128, +128, 64, orthogonal init) is ``configs/residual.yaml``.

    Args:
        n_features: input features per day; linked from ``data.n_features`` by the CLI.
        hidden_sizes: width of each recurrent layer (the recipe's plain stack; its Step 4 is 128, 128, 128, 64).
        residual: skip connections between recurrent layers (projection where widths differ).
        dropout: dropout after each recurrent layer (the recipe's 0.2).
        cell: ``lstm`` or ``gru``.
        init: ``orthogonal`` (each gate block), ``glorot`` or ``default`` (torch's).
        gain: gain of the orthogonal / Glorot weights.
        forget_bias: LSTM forget-gate bias (Keras' unit_forget_bias).
        horizon: days predicted at once; linked from ``data.horizon`` by the CLI.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        warmup_steps: optimizer steps of linear learning-rate warm-up from lr/warmup_steps to lr (0 = off).
        loss: ``mse`` (the recipe's) or ``huber``, on standardised targets.
    """

    def __init__(
        self,
        n_features: int = 5,
        hidden_sizes: tuple[int, ...] = (128, 64, 32),
        residual: bool = False,
        dropout: float = 0.2,
        cell: str = "lstm",
        init: str = "default",
        gain: float = 1.0,
        forget_bias: float = 1.0,
        horizon: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        loss: str = "mse",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is unknown; use one of {sorted(LOSSES)}")
        self.model = ResidualLSTM(
            n_features, tuple(hidden_sizes), residual, dropout, cell, init, gain, forget_bias, horizon
        )
        self.loss_fn = LOSSES[loss]
        self.metrics = nn.ModuleDict({stage: ForecastMetrics() for stage in ("val", "test")})
        self.epoch_metrics: dict[str, dict[str, float]] = {}  # last epoch's float64 metrics per stage
        self._train_loss_sum: Tensor | None = None  # sum of loss * batch size over this epoch
        self._train_loss_n = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ---- steps -------------------------------------------------------------------------------
    def _shared_step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor], stage: str) -> Tensor:
        """Loss on scaled targets in the network's precision; metrics in price units in float64.

        Prices come from the data module's raw float64 prices by window ``index``, never from the
        batch's floating tensors (a ``*-true`` precision casts those to bf16/fp16 before this runs).
        """
        x, y, _, index = batch  # (B, T, F), (B, H) scaled, (B,) price, (B,) window numbers
        pred = self(x)
        loss = self.loss_fn(pred, y)
        if stage == "train":
            self._log_train_loss(loss, len(x))
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(x))
            dm = self.trainer.datamodule
            anchor, actual = dm.window_prices(stage, index)  # float64 (B,), (B, H)
            self.metrics[stage].update(dm.inverse_transform(pred, anchor), actual, anchor)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def _log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        """Log ``train/loss_step`` only where it is shown (a step the logger writes, or a progress bar)
        and keep the epoch's sample-weighted mean as a tensor, logged as ``train/loss_epoch``.

        Lightning's ``self.log`` costs ~0.1-0.3 ms of Python per call (``_ResultCollection.log`` calls
        ``_ResultMetric.to``, which runs ``apply_to_collection`` and deep-copies the metadata dataclass:
        ``lightning/pytorch/trainer/connectors/logger_connector/result.py``); once per step it was the
        largest per-step cost Lightning added over a plain loop (``python -m benchmarks.bench``, item 1).
        """
        weighted = loss.detach() * batch_size
        self._train_loss_sum = weighted if self._train_loss_sum is None else self._train_loss_sum + weighted
        self._train_loss_n += batch_size
        if self._logger_writes_this_step() or self.trainer.progress_bar_callback is not None:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)

    def on_train_epoch_start(self) -> None:
        self._train_loss_sum, self._train_loss_n = None, 0

    def on_train_epoch_end(self) -> None:
        if self._train_loss_n:
            self.log("train/loss_epoch", self._train_loss_sum / self._train_loss_n, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Return float64 prices of the predict (test) span: ``predicted``, ``actual`` (B, H) and
        ``persistence`` (B,), whatever precision the network ran in."""
        x, _, _, index = batch
        dm = self.trainer.datamodule
        anchor, actual = dm.window_prices("test", index)  # predict_dataloader is the test span
        return {"predicted": dm.inverse_transform(self(x), anchor), "actual": actual, "persistence": anchor}

    def _log_epoch_metrics(self, stage: str) -> dict[str, float]:
        """Log a stage's price-unit metrics; keep the float64 values in ``epoch_metrics[stage]``, since
        ``self.log`` stores them as float32 (Lightning's ``_ResultMetric`` uses the default dtype)."""
        values = {f"{stage}/{k}": float(v) for k, v in self.metrics[stage].compute().items()}
        self.epoch_metrics[stage] = values
        self.log_dict(values, prog_bar=False)
        self.metrics[stage].reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics, and store them beside the hyperparameters (TensorBoard's HPARAMS tab): the
        model's and the data module's, whose target / features / date column are the resolved ones."""
        values = self._log_epoch_metrics("test")
        if self.logger is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            data = getattr(self.trainer.datamodule, "hparams", {})
            params = {k: v for k, v in {**data, **self.hparams}.items() if k != "_class_path"}
            self.logger.log_hyperparams(params, {f"hparams/{k}": v for k, v in values.items()})

    # ---- gradients ---------------------------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        """Bring the gradient diagnostics: a plain ``Trainer().fit(LSTMForecaster(), datamodule=...)`` logs
        ``grad_norm/lstm_0 ..`` through the one pipeline (:class:`GradientMonitor`). A monitor the trainer
        already has (the commands configure one) is kept as it is."""
        if self._trainer is not None and any(isinstance(c, GradientMonitor) for c in self.trainer.callbacks):
            return []
        return [GradientMonitor()]

    def _logger_writes_this_step(self) -> bool:
        """Mirror Lightning's ``should_update_logs``: the step about to finish is ``global_step + 1``."""
        every = self.trainer.log_every_n_steps
        return bool(self.logger) and every > 0 and (self.trainer.global_step + 1) % every == 0

    # ---- checkpoints -------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint made for other data or layer sizes with one line, not a size-mismatch
        traceback (Lightning loads the weights right after this hook, before the DataModule state)."""
        check_compatible(checkpoint, self)

    # ---- optimiser ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.warmup_steps <= 0:
            return optimizer
        ramp = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / hp.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}
