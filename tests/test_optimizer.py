"""The forecaster's Adam: fused where torch has the kernel, the same update as Adam written out by hand."""

import lightning.pytorch as pl
import torch

from lstm_grad.forecaster.optimizer import make_adam, uses_mixed_precision
from lstm_grad.module import LSTMForecaster


def adam_by_hand(param: torch.Tensor, grads: list[torch.Tensor], lr: float, weight_decay: float) -> torch.Tensor:
    """Kingma & Ba (2015), Algorithm 1, with L2 weight decay added to the gradient (torch's Adam), float64."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    theta, m, v = param.double().clone(), torch.zeros_like(param, dtype=torch.float64), torch.zeros_like(
        param, dtype=torch.float64)
    for t, grad in enumerate(grads, start=1):
        g = grad.double() + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


def test_make_adam_is_fused_on_the_cpu_and_steps_as_adam_by_hand():
    torch.manual_seed(0)
    start = torch.randn(7, 5)
    grads = [torch.randn(7, 5) for _ in range(4)]
    param = torch.nn.Parameter(start.clone())
    optimizer = make_adam([param], lr=0.01, weight_decay=0.1)
    assert optimizer.defaults["fused"] is True
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    expected = adam_by_hand(start, grads, lr=0.01, weight_decay=0.1)
    torch.testing.assert_close(param.detach().double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(param.detach(), start)  # it moved: the comparison is not of two unchanged tensors


def test_make_adam_falls_back_to_torch_default_where_there_is_no_fused_kernel():
    on_meta = torch.nn.Parameter(torch.empty(3, device="meta"))  # "meta" has no fused Adam
    assert make_adam([on_meta], lr=1e-3).defaults["fused"] is None


def test_the_forecaster_trains_with_the_fused_adam():
    module = LSTMForecaster(n_features=3, hidden_sizes=(4,))
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"] is True
    assert optimizer.defaults["lr"] == module.hparams.lr


def test_under_mixed_precision_it_is_torch_default_adam_so_lightning_can_unscale_and_clip():
    param = torch.nn.Parameter(torch.zeros(2))
    assert make_adam([param], lr=1e-3, mixed_precision=True).defaults["fused"] is None


def test_lightning_mixed_precision_is_recognised_from_the_trainer():
    assert not uses_mixed_precision(None)  # a module not attached to a Trainer
    assert not uses_mixed_precision(pl.Trainer(logger=False, enable_checkpointing=False))  # 32-true
    assert uses_mixed_precision(pl.Trainer(precision="bf16-mixed", logger=False, enable_checkpointing=False))
