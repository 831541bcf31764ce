"""``LSTMForecaster``: loss, honest metrics in price units, optimiser; gradient norms through the one pipeline.

The delivered forecast is the network's, shrunk toward persistence by a weight per step, with conformal
80 % / 95 % intervals (:mod:`~lstm_grad.forecaster.shrinkage`, :mod:`~lstm_grad.forecaster.intervals`):
both are fitted at the end of every validation epoch on that epoch's validation predictions, so the
checkpoint of an epoch carries the calibration of its own weights (``checkpoint["forecaster_calibration"]``).
``val/*`` metrics are the network's own (the calibration is fitted on them); ``test/*``, ``predict_step``,
``python -m lstm_grad.forecast`` and the backtest use the calibrated forecaster.

The gradient diagnostics are not re-implemented here: :meth:`LSTMForecaster.configure_callbacks` attaches
a :class:`~lstm_grad.diagnostics.monitor.GradientMonitor` (the same callback any model uses) when the
trainer has none, so ``grad_norm/lstm_0 ..``, ``grad_norm/total`` and ``grad_norm/total_clipped`` are
the stepping optimizer's unscaled, accumulated gradient before and after clipping, on the steps
Lightning writes logs (``lstm_grad/diagnostics/monitor.py`` cites the hook order it relies on).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_grad.training.board import hparams_metrics, hparams_view
from lstm_grad.errors import ConfigError
from lstm_grad.training.compat import check_compatible
from lstm_grad.diagnostics.monitor import GradientMonitor
from lstm_grad.forecaster.baselines import anchor_scale, drift_forecast, train_prices, train_reference
from lstm_grad.forecaster.evaluation import evaluate
from lstm_grad.forecaster.intervals import LEVELS, conformal_interval, level_name, random_walk_interval
from lstm_grad.forecaster.metrics import ForecastMetrics
from lstm_grad.forecaster.model import ResidualLSTM
from lstm_grad.forecaster.optimizer import make_adam, uses_mixed_precision
from lstm_grad.forecaster.shrinkage import PRIOR_WINDOWS, fit_calibration

LOSSES = {"mse": F.mse_loss, "huber": F.huber_loss}
CALIBRATION_KEY = "forecaster_calibration"  # shrink weights, conformal quantiles, train-span reference


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
        shrink_prior: weight of the random-walk prior, in independent validation forecasts, when the predicted
            move is shrunk toward persistence per step (``forecaster/shrinkage.py``). The default ``inf``
            delivers persistence at every step: on daily gold no finite prior beat it out of sample
            (``experiments.shrink_choice``, folds testing 2003-2007); 0 = the validation least-squares weight
            alone, null = no shrinking (the network as trained).
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
        shrink_prior: float | None = PRIOR_WINDOWS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is unknown; use one of {sorted(LOSSES)}")
        if shrink_prior is not None and not shrink_prior >= 0:
            raise ConfigError(f"model.shrink_prior={shrink_prior!r} must be >= 0 (0: the validation weight alone) "
                              "or null (no shrinking)")
        self.model = ResidualLSTM(
            n_features, tuple(hidden_sizes), residual, dropout, cell, init, gain, forget_bias, horizon
        )
        self.loss_fn = LOSSES[loss]
        self.metrics = nn.ModuleDict({stage: ForecastMetrics() for stage in ("val", "test")})
        self.epoch_metrics: dict[str, dict[str, float]] = {}  # last epoch's float64 metrics per stage
        self.calibration: dict[str, Any] = {}  # fitted on validation; saved in and restored from checkpoints
        self.test_outputs: dict[str, np.ndarray] = {}  # the last test run's float64 prices and intervals
        self._outputs: dict[str, list[tuple[Tensor, ...]]] = {"val": [], "test": []}
        self._epoch_loss: dict[str, tuple[Tensor, int]] = {}  # per stage: (sum of loss * batch size, windows)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ---- steps -------------------------------------------------------------------------------
    def _shared_step(self, batch: tuple[Tensor, Tensor, Tensor, Tensor], stage: str) -> Tensor:
        """Loss on scaled targets in the network's precision; metrics in price units in float64.

        Prices come from the data module's raw float64 prices by window ``index``, never from the
        batch's floating tensors (a ``*-true`` precision casts those to bf16/fp16 before this runs).
        Validation scores the network's prices, test the calibrated forecast (:meth:`shrink_prices`).
        """
        x, y, _, index = batch  # (B, T, F), (B, H) scaled, (B,) price, (B,) window numbers
        pred = self(x)
        loss = self.loss_fn(pred, y)
        self._add_loss(stage, loss, len(x))
        if stage == "train":
            self._log_train_loss(loss, len(x))
        else:
            dm = self.trainer.datamodule
            anchor, actual = dm.window_prices(stage, index)  # float64 (B,), (B, H)
            prices = dm.inverse_transform(pred, anchor)
            if stage == "test":
                prices = self.shrink_prices(prices, anchor)
            self.metrics[stage].update(prices, actual, anchor)
            self._outputs[stage].append((prices.detach(), actual, anchor, index))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def _add_loss(self, stage: str, loss: Tensor, batch_size: int) -> None:
        """Add a batch to the stage's sample-weighted mean loss, kept as a tensor (no host sync) and logged
        once at the epoch's end (``train/loss_epoch``, ``val/loss``, ``test/loss``).

        Lightning's ``self.log`` costs ~0.2-0.4 ms of Python per call on this CPU (``_ResultCollection.log``
        alone 0.22 ms, 0.19 of it in ``_ResultMetric.to``, which runs ``apply_to_collection`` and deep-copies
        the metadata dataclass: ``lightning/pytorch/trainer/connectors/logger_connector/result.py``); once per
        batch it was the largest per-step cost Lightning added over a plain loop (``python -m benchmarks.bench``,
        item 1).
        """
        total, windows = self._epoch_loss.get(stage, (0.0, 0))
        self._epoch_loss[stage] = (loss.detach() * batch_size + total, windows + batch_size)

    def _log_epoch_loss(self, stage: str, name: str, sync_dist: bool) -> None:
        """Log the stage's mean loss over the epoch as ``name`` and start the next epoch's sum."""
        total, windows = self._epoch_loss.pop(stage, (None, 0))
        if windows:
            self.log(name, total / windows, on_epoch=True, prog_bar=True, sync_dist=sync_dist)

    def _log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        """Log ``train/loss_step`` only where it is shown (a step the logger writes, or a progress bar)."""
        if self._logger_writes_this_step() or self.trainer.progress_bar_callback is not None:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)

    def on_train_epoch_start(self) -> None:
        self._epoch_loss.pop("train", None)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_loss("train", "train/loss_epoch", sync_dist=False)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Return float64 prices of the predict (test) span: ``predicted`` (calibrated), ``actual`` (B, H),
        ``persistence`` (B,) and the conformal bounds ``lower_80`` .. ``upper_95`` (B, H), whatever
        precision the network ran in."""
        x, _, _, index = batch
        dm = self.trainer.datamodule
        anchor, actual = dm.window_prices("test", index)  # predict_dataloader is the test span
        predicted = self.shrink_prices(dm.inverse_transform(self(x), anchor), anchor)
        bounds = self.interval_bounds(predicted.cpu().numpy(), anchor_scale(dm, "test", index))
        return {"predicted": predicted, "actual": actual, "persistence": anchor,
                **{k: torch.from_numpy(v) for k, v in bounds.items()}}

    # ---- calibration: shrink weights and intervals, fitted on validation -------------------------
    def shrink_prices(self, prices: Tensor, anchor: Tensor) -> Tensor:
        """Return ``anchor + w_h * (prices - anchor)`` (float64, (B, H)) with the fitted weights ``w_h``;
        the network's prices unchanged before any validation epoch has fitted them."""
        weights = self.calibration.get("shrink")
        if weights is None:
            return prices.double()
        w = torch.tensor(weights, dtype=torch.float64, device=prices.device)  # (H,)
        base = anchor.double().unsqueeze(-1)  # (B,) -> (B, 1)
        return base + w * (prices.double() - base)

    def interval_bounds(self, pred: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
        """Return the conformal ``lower_80, upper_80, lower_95, upper_95`` (N, H) around ``pred`` (N, H) for
        windows whose sigma_t is ``scale`` (N,); NaN where no validation epoch has calibrated them."""
        out = {}
        for level in LEVELS:
            name = level_name(level)
            q = self.calibration.get(f"q_{name}") or [np.nan] * pred.shape[1]
            out[f"lower_{name}"], out[f"upper_{name}"] = conformal_interval(pred, scale, q)
        return out

    def _gathered(self, stage: str) -> list[np.ndarray]:
        """Return the stage's collected prices, actual, anchor and window index as float64 / int numpy arrays,
        from every process under DDP (``all_gather``: the DistributedSampler gives ranks equal shares)."""
        parts = [torch.cat(column) for column in zip(*self._outputs[stage])]
        self._outputs[stage] = []
        if self.trainer.world_size > 1:
            parts = [self.all_gather(t).flatten(0, 1) for t in parts]  # (W, N, ...) -> (W * N, ...)
        return [t.cpu().numpy() for t in parts]

    def _reference(self) -> dict[str, float]:
        """The train span's MASE scale, drift slope and log-return volatility (empty for a data module
        that is not a ``GoldDataModule``)."""
        dm = self.trainer.datamodule
        return train_reference(dm) if getattr(dm, "_raw", None) is not None else {}

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []
        self._epoch_loss.pop("val", None)
        self._set_reference("val")

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []
        self._epoch_loss.pop("test", None)
        self._set_reference("test")

    def _set_reference(self, stage: str) -> None:
        reference = self._reference()
        self.metrics[stage].scale = reference.get("mase_scale")
        self.metrics[stage].drift_slope = reference.get("drift_slope")

    def _log_epoch_metrics(self, stage: str, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Log a stage's price-unit metrics; keep the float64 values in ``epoch_metrics[stage]``, since
        ``self.log`` stores them as float32 (Lightning's ``_ResultMetric`` uses the default dtype)."""
        values = {f"{stage}/{k}": float(v) for k, v in {**self.metrics[stage].compute(), **(extra or {})}.items()}
        self.epoch_metrics[stage] = values
        self._log_epoch_loss(stage, f"{stage}/loss", sync_dist=True)  # the mean over every process's windows
        self.log_dict(values, prog_bar=False)
        self.metrics[stage].reset()
        return values

    def on_validation_epoch_end(self) -> None:
        """Log the network's validation metrics; fit the calibration on this epoch's validation predictions
        (not on the sanity check's few batches)."""
        if not self.trainer.sanity_checking and self._outputs["val"]:
            prices, actual, anchor, index = self._gathered("val")
            scale = anchor_scale(self.trainer.datamodule, "val", index)
            prior = self.hparams.shrink_prior
            self.calibration = {**fit_calibration(prices, actual, anchor, scale, prior), **self._reference()}
        self._outputs["val"] = []
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics (with DM p against persistence and drift, interval coverage and score), keep the
        float64 test prices in ``test_outputs``, and store the metrics beside the hyperparameters
        (TensorBoard's HPARAMS tab): the model's and the data module's, whose target / features / date
        column are the resolved ones."""
        extra = self._test_scores() if self._outputs["test"] else {}
        values = self._log_epoch_metrics("test", extra)
        if self.logger is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            data = getattr(self.trainer.datamodule, "hparams", {})
            params = hparams_view(self.hparams, data)  # flat and readable (lstm_grad.training.board)
            self.logger.log_hyperparams(params, hparams_metrics(values))

    def _test_scores(self) -> dict[str, float]:
        """Score the gathered test predictions with :func:`evaluate` (numbers, not text): DM p against
        persistence and drift, drift's own metrics, interval coverage and score beside the random walk's."""
        prices, actual, anchor, index = self._gathered("test")
        dm, reference = self.trainer.datamodule, self._reference()
        horizon = actual.shape[1]
        drift = drift_forecast(anchor, train_prices(dm), horizon) if reference else np.repeat(anchor[:, None], horizon, 1)
        bounds = self.interval_bounds(prices, anchor_scale(dm, "test", index)) if reference else None
        rw = None
        if np.isfinite(reference.get("train_log_vol", np.nan)):  # persistence's random-walk interval
            rw = {f"{side}_{level_name(c)}": bound for c in LEVELS
                  for side, bound in zip(("lower", "upper"), random_walk_interval(anchor, train_prices(dm), horizon, c))}
        self.test_outputs = {"pred": prices, "actual": actual, "anchor": anchor, "drift": drift, **(bounds or {})}
        scores = evaluate(prices, actual, anchor, drift, reference.get("mase_scale"), bounds, rw)
        return {**scores, **{k: reference[k] for k in ("mase_scale",) if k in reference}}

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
        traceback (Lightning loads the weights right after this hook, before the DataModule state); restore
        the calibration (shrink weights, interval quantiles) fitted with those weights."""
        check_compatible(checkpoint, self)
        self.calibration = dict(checkpoint.get(CALIBRATION_KEY) or {})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the calibration of the current weights beside them (plain Python values, float64 exact)."""
        checkpoint[CALIBRATION_KEY] = dict(self.calibration)

    # ---- optimiser ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = make_adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                              mixed_precision=uses_mixed_precision(self._trainer))
        if hp.warmup_steps <= 0:
            return optimizer
        ramp = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / hp.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}
