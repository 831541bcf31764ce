"""GradientMonitor on the setups people have, each against an independent recorder of the gradient the
optimizer used: ``p.grad`` read before clipping (a callback's ``on_before_optimizer_step``, or the module
itself right before its own ``clip_gradients``) and after the update (a torch ``register_step_post_hook``:
Adam and SGD leave ``.grad`` as they used it)."""

from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lstm_grad.diagnostics import GradientFinding, GradientHealthWarning, GradientMonitor, GradientTracker, TimeGradientProbe


def owner_norms(named_grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """{owner module: L2 norm of its gradients, "total": over all}, in float64, by hand."""
    squares: dict[str, float] = defaultdict(float)
    for name, grad in named_grads.items():
        values = grad.coalesce().values() if grad.is_sparse else grad
        squares[name.rpartition(".")[0]] += float(values.double().square().sum())
    out = {k: math.sqrt(v) for k, v in squares.items()}
    out["total"] = math.sqrt(sum(squares.values()))
    return out


def grads_of(module: nn.Module, params: set[int]) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if id(p) in params and p.grad is not None}


class Recorder(pl.Callback):
    """Per optimizer and batch: pre-clip norms (automatic optimization) and the norms the update used."""

    def __init__(self) -> None:
        self.batch = -1
        self.pre: dict[tuple[int, int], dict[str, float]] = {}
        self.used: dict[tuple[int, int], dict[str, float]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batch += 1

    def on_fit_start(self, trainer, module):
        for index, optimizer in enumerate(trainer.optimizers):
            def after_step(opt, args, kwargs, index=index):
                held = {id(p) for g in opt.param_groups for p in g["params"]}
                self.used[(index, self.batch)] = owner_norms(grads_of(module, held))
            optimizer.register_step_post_hook(after_step)

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if module.automatic_optimization:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self.pre[(0, self.batch)] = owner_norms(grads_of(module, held))


def loader(n: int = 32, features: int = 4, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def trainer_for(memory_logger, callbacks, epochs=1, **kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=memory_logger, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, **kw)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


class GAN(pl.LightningModule):
    """Lightning's GAN recipe: manual optimization, two optimizers, the generator clipped by the user."""

    def __init__(self, clip: float = 0.05) -> None:
        super().__init__()
        self.automatic_optimization, self.clip = False, clip
        self.generator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
        self.discriminator = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.pre: dict[tuple[int, int], dict[str, float]] = {}
        self.batches = -1

    def training_step(self, batch, batch_idx):
        self.batches += 1
        g_opt, d_opt = self.optimizers()
        real = batch[0]
        fake = self.generator(torch.randn_like(real))
        g_loss = F.softplus(-self.discriminator(fake)).mean()  # also leaves .grad in the discriminator
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        self.pre[(0, self.batches)] = owner_norms(grads_of(self, {id(p) for p in self.generator.parameters()}))
        self.clip_gradients(g_opt, self.clip, "norm")
        g_opt.step()
        d_loss = F.softplus(-self.discriminator(real)).mean() + F.softplus(self.discriminator(fake.detach())).mean()
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        self.pre[(1, self.batches)] = owner_norms(grads_of(self, {id(p) for p in self.discriminator.parameters()}))
        d_opt.step()
        self.log("train/g_loss", g_loss)

    def configure_optimizers(self):
        return (torch.optim.Adam(self.generator.parameters(), 1e-3), torch.optim.Adam(self.discriminator.parameters(), 1e-3))


@pytest.mark.parametrize("every", [1, 2])
def test_gan_two_optimizers_each_measured_over_its_own_parameters_before_the_users_clip(MemoryLogger, every):
    logger, recorder, module = MemoryLogger(), Recorder(), GAN()
    trainer_for(logger, [GradientMonitor(), recorder], log_every_n_steps=every).fit(module, loader())
    values = logger.values
    steps = sorted(values["train/g_loss"])
    assert steps == [s for s in range(4) if (s + 1) % every == 0]  # self.log's step axis
    for index, prefix in ((0, "generator"), (1, "discriminator")):
        assert sorted(values[f"grad_norm/opt{index}/total"]) == steps  # same steps as self.log, both optimizers
        assert not any(k.startswith(f"grad_norm/opt{index}/{'discriminator' if index == 0 else 'generator'}")
                       for k in values)  # never the other optimizer's (stale) gradient
        for step in steps:
            pre, used = module.pre[(index, step)], recorder.used[(index, step)]
            assert close(values[f"grad_norm/opt{index}/total"][step], pre["total"])
            assert close(values[f"grad_norm/opt{index}/{prefix}.0"][step], pre[f"{prefix}.0"])
            if index == 0:  # clipped through self.clip_gradients: measured after it too
                assert close(values["grad_norm/opt0/total_clipped"][step], used["total"])
            else:  # the discriminator's step: no clipping the monitor saw, so none claimed
                assert close(values["grad_norm/opt1/total"][step], used["total"])
    assert "grad_norm/opt1/total_clipped" not in values and "grad_health/opt1/clip_rate" not in values
    clipped = [values["grad_health/opt0/clipped"][s] for s in steps]
    assert clipped == [float(module.pre[(0, s)]["total"] > 0.05) for s in steps] and any(clipped)
    assert all(values["grad_norm/opt0/total_clipped"][s] <= 0.05 + 1e-6 for s in steps)


class Finetuned(pl.LightningModule):
    """A backbone that ``BackboneFinetuning`` freezes at the start and unfreezes at epoch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.backbone(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.05)


@pytest.mark.parametrize("monitor_first", [True, False])
def test_unfrozen_backbone_joins_the_total_that_clipping_sees(MemoryLogger, monitor_first):
    logger, recorder = MemoryLogger(), Recorder()
    tuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.0)
    monitor = GradientMonitor()
    callbacks = [monitor, tuning, recorder] if monitor_first else [tuning, monitor, recorder]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer_for(logger, callbacks, epochs=2, log_every_n_steps=1, gradient_clip_val=0.01).fit(Finetuned(), loader())
    values = logger.values
    assert not [w for w in record if issubclass(w.category, GradientHealthWarning)]  # frozen is not vanishing
    findings = [str(w.message).split(":")[0] for w in record if issubclass(w.category, GradientFinding)]
    assert findings == ["[warning] clip_saturated", "[warning] lr_too_low"]  # a clip of 0.01 on norms of ~2: true
    assert sorted(values["grad_norm/total"]) == list(range(8))
    assert sorted(values["grad_norm/backbone.0"]) == [4, 5, 6, 7]  # only once it has a gradient
    for step in range(8):
        pre, used = recorder.pre[(0, step)], recorder.used[(0, step)]
        assert close(values["grad_norm/total"][step], pre["total"])  # what clip_grad_norm_ saw
        assert close(values["grad_norm/total_clipped"][step], used["total"])
        assert values["grad_norm/total_clipped"][step] <= 0.01 + 1e-7
        if step >= 4:
            assert close(values["grad_norm/backbone.2"][step], pre["backbone.2"])


class WithSpare(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.spare = nn.Linear(4, 8), nn.Linear(8, 1), nn.Linear(8, 8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(torch.tanh(self.body(x))), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-3)


def test_a_layer_forward_never_calls_is_reported_once_not_logged_as_zero(MemoryLogger, caplog):
    logger = MemoryLogger()
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO, "lstm_grad"):
        warnings.simplefilter("always")
        trainer_for(logger, [GradientMonitor()], epochs=2, log_every_n_steps=1).fit(WithSpare(), loader())
    assert "grad_norm/spare" not in logger.values and sorted(logger.values["grad_norm/body"]) == list(range(8))
    assert not [w for w in record if issubclass(w.category, GradientHealthWarning)]
    said = [r.getMessage() for r in caplog.records if "no gradient reached" in r.getMessage()]
    assert len(said) == 1 and "'spare'" in said[0] and "not used in forward, frozen" in said[0]


class SparseBag(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6, sparse=True)
        self.head = nn.Linear(6, 1).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        tokens, y = batch
        return F.mse_loss(self.head(self.embedding(tokens).mean(1)), y)

    def configure_optimizers(self):
        return torch.optim.SparseAdam(list(self.embedding.parameters()), lr=1e-2)


def test_sparse_embedding_gradients_are_measured_by_their_coalesced_values(MemoryLogger):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (32, 5), generator=generator)  # repeated indices: coalescing matters
    data = DataLoader(TensorDataset(tokens, torch.randn(32, 1, generator=generator)), batch_size=8)
    logger, recorder = MemoryLogger(), Recorder()
    trainer_for(logger, [GradientMonitor(), recorder], log_every_n_steps=1).fit(SparseBag(), data)
    for step in range(4):
        assert close(logger.values["grad_norm/embedding"][step], recorder.pre[(0, step)]["embedding"])
        assert close(logger.values["grad_norm/total"][step], recorder.pre[(0, step)]["total"])


def test_pytorch_lightning_namespace_module_and_trainer(MemoryLogger):
    """darts and neuralforecast build on ``pytorch_lightning``: a module and trainer from that namespace."""
    ptl = pytest.importorskip("pytorch_lightning")

    class Legacy(ptl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.GRU(4, 8, batch_first=True), nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out, _ = self.rnn(x.unsqueeze(1).expand(-1, 3, -1))  # (B, T=3, F)
            return F.mse_loss(self.head(out[:, -1]), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    class LegacyLogger(ptl.loggers.logger.Logger):
        def __init__(self) -> None:
            super().__init__()
            self.inner = MemoryLogger()

        name, version = "memory", 0

        def log_hyperparams(self, *args, **kwargs) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            self.inner.log_metrics(metrics, step)

    logger, recorder = LegacyLogger(), Recorder()
    ptl.Trainer(max_epochs=1, logger=logger, callbacks=[GradientMonitor(), recorder], log_every_n_steps=1,
                gradient_clip_val=0.1, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False).fit(Legacy(), loader())
    values = logger.inner.values
    for step in range(4):
        assert close(values["grad_norm/rnn"][step], recorder.pre[(0, step)]["rnn"])
        assert close(values["grad_norm/total_clipped"][step], recorder.used[(0, step)]["total"])


class MLP(pl.LightningModule):
    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__()
        self.body, self.head, self.checkpointed = nn.Linear(4, 8), nn.Linear(8, 1), checkpointed

    def forward(self, x):  # (B, F) -> (B, 1), or (B, T, F) -> (B, 1) from the last step
        if self.checkpointed:  # reentrant activation checkpointing
            hidden = torch.utils.checkpoint.checkpoint(self.body, x, use_reentrant=True)
        else:
            hidden = self.body(x)
        out = self.head(torch.tanh(hidden))
        return out[:, -1] if out.dim() == 3 else out

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        return F.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-3)


def dict_loader(sequence: bool) -> DataLoader:
    x = torch.randn(16, 5, 4) if sequence else torch.randn(16, 4)
    return DataLoader([{"x": a, "y": a.sum(-1, keepdim=True)[-1] if sequence else a.sum(-1, keepdim=True)}
                       for a in x], batch_size=8)


@pytest.mark.parametrize("case", ["flat input", "reentrant checkpoint", "dict batch"])
def test_probe_that_cannot_run_says_so_once_and_steps_aside(MemoryLogger, case):
    module = MLP(checkpointed=case == "reentrant checkpoint")
    split = (lambda b: (b["x"], b["y"])) if case != "dict batch" else None
    probe = TimeGradientProbe(split_batch=split)
    logger = MemoryLogger()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = trainer_for(logger, [probe], epochs=2, log_every_n_steps=1)
        trainer.fit(module, dict_loader(sequence=case != "flat input"))
    said = [str(w.message) for w in record if "TimeGradientProbe cannot probe" in str(w.message)]
    assert len(said) == 1 and probe.off and trainer.global_step == 4  # the run trained to the end
    assert not any(k.startswith("grad_time/") for k in logger.values)


def test_probe_reads_dict_batches_through_split_batch(MemoryLogger):
    module = MLP()
    probe = TimeGradientProbe(split_batch=lambda b: (b["x"], b["y"]), lags=(1, 5))
    logger = MemoryLogger()
    trainer_for(logger, [probe], epochs=1, log_every_n_steps=1).fit(module, dict_loader(sequence=True))
    assert not probe.off and sorted(logger.values["grad_time/reach"]) == [0, 2]
    assert logger.values["grad_time/lag_5"][0] == 0.0  # only the last step reaches the output


@pytest.mark.parametrize("loop", ["plain", "fabric"])
def test_two_call_api_in_a_hand_written_and_a_fabric_loop(loop):
    """The tracker's tags against p.grad read by hand before and after clipping, on a net with an unused layer."""
    torch.manual_seed(0)
    net = WithSpare()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    if loop == "fabric":
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator="cpu", devices=1)
        wrapped, optimizer = fabric.setup(net, optimizer)
    tracker = GradientTracker(net)
    for step, (x, y) in enumerate(loader()):
        optimizer.zero_grad()
        loss = F.mse_loss(net.head(torch.tanh(net.body(x))), y)
        fabric.backward(loss) if loop == "fabric" else loss.backward()
        tracker.before_clip(optimizer if loop == "plain" else optimizer.optimizer, step=step, log=step % 2 == 0)
        pre = owner_norms(grads_of(net, {id(p) for p in net.parameters()}))
        if loop == "fabric":
            fabric.clip_gradients(wrapped, optimizer, max_norm=0.05)
        else:
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
        post = owner_norms(grads_of(net, {id(p) for p in net.parameters()}))
        result = tracker.after_clip()
        if step % 2:
            assert result.tags == {}
            continue
        assert set(result.tags) >= {"grad_norm/body", "grad_norm/head", "grad_norm/total", "grad_norm/total_clipped"}
        assert "grad_norm/spare" not in result.tags  # no gradient: left out, not 0
        for group in ("body", "head", "total"):
            assert close(result.tags[f"grad_norm/{group}"], pre[group])
        assert close(result.tags["grad_norm/total_clipped"], post["total"])
        assert result.tags["grad_health/clipped"] == float(pre["total"] > 0.05)
        optimizer.step()


@pytest.mark.parametrize(("check_ms", "kept"), [(0.4, True), (0.6, False)])
def test_automatic_per_step_check_is_kept_only_within_its_budget(check_ms, kept):
    """0.5 % of a 100 ms step is 0.5 ms: a 0.4 ms check stays on, a 0.6 ms one goes (a fake clock)."""
    from lstm_grad.diagnostics.check_budget import CheckBudget

    budget, answers = CheckBudget(), []
    for batch in range(7):
        answers.append(budget.decide(0.1 * batch, [check_ms / 1e3] * min(batch, 5)))
    assert answers[:5] == [None] * 5 and answers[5] is kept  # 5 step intervals and 5 checks timed
    assert f"{check_ms:.2f} ms of a 100.0 ms step" in budget.note


class Weights(pl.Callback):
    """The weights right before and right after each optimizer step, by hand."""

    def __init__(self) -> None:
        self.before, self.after, self.batch = {}, {}, -1

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batch += 1

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.before[self.batch] = {n: p.detach().double().clone() for n, p in module.named_parameters()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after[self.batch] = {n: p.detach().double().clone() for n, p in module.named_parameters()}


def test_update_ratio_is_the_weight_change_over_the_weight_by_hand(MemoryLogger):
    logger, weights = MemoryLogger(), Weights()
    trainer_for(logger, [GradientMonitor(), weights], log_every_n_steps=2).fit(WithSpare(), loader())
    steps = sorted(logger.values["grad_update/body"])
    assert steps == [1, 3] and "grad_update/spare" not in logger.values  # logged steps only; no gradient, no update
    for step in steps:
        for group in ("body", "head"):
            names = [n for n in weights.after[step] if n.startswith(f"{group}.")]
            moved = math.sqrt(sum(float((weights.after[step][n] - weights.before[step][n]).square().sum()) for n in names))
            size = math.sqrt(sum(float(weights.after[step][n].square().sum()) for n in names))
            assert math.isclose(logger.values[f"grad_update/{group}"][step], moved / size, rel_tol=1e-4)
