"""nonfinite_origin: planted non-finite values, each with the exact module and phase expected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lstm_grad.diagnostics.origin import INPUT, LOSS, Origin, nonfinite_origin


class Blowup(nn.Module):
    """Multiply by inf when ``armed`` (or, with ``train_only``, only in training mode)."""

    def __init__(self, armed: bool = True, train_only: bool = False) -> None:
        super().__init__()
        self.armed, self.train_only = armed, train_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fire = self.armed and (self.training or not self.train_only)
        return x * float("inf") if fire else x


class Sqrt(nn.Module):
    """Finite forward at 0, infinite derivative there: d sqrt(x)/dx = 1 / (2 sqrt(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class NanBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NanGrad.apply(x)


class Stack(nn.Module):
    """lstm_0 -> lstm_1 -> head on the last step, as the forecaster's layout names them."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm_0, self.lstm_1 = nn.LSTM(3, 4, batch_first=True), nn.LSTM(4, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # B batch, T window, F features, H hidden
        out, _ = self.lstm_0(x)  # (B, T, F) -> (B, T, H)
        out, _ = self.lstm_1(out)  # (B, T, H) -> (B, T, H)
        return self.head(out[:, -1])  # (B, H) -> (B, 1)


class DivideByZero(nn.Module):
    """A container whose own code (not a submodule) makes the Inf."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.outer = nn.Linear(2, 2), nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x) / 0.0)


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear layer whose output is exactly 0 (its gradients still flow)."""
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


def mse_of(model: nn.Module, x: torch.Tensor):
    return lambda: nn.functional.mse_loss(model(x), torch.ones(x.shape[0], 1))


def hooks_left(model: nn.Module) -> list[str]:
    attrs = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    left = [f"{n}.{a}" for n, m in model.named_modules() for a in attrs if getattr(m, a)]
    return left + [n for n, p in model.named_parameters() if p._backward_hooks]


def test_forward_inf_names_the_layer_not_its_container_or_successor() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), Blowup(), nn.Linear(4, 1))
    origin = nonfinite_origin(net, mse_of(net, torch.randn(5, 3)))
    assert origin == Origin("1", "forward", "output", 1, "Blowup")  # after "0", before "2" and ""
    assert origin.describe().startswith("non-finite born in the forward of '1' (Blowup): output")


@pytest.mark.parametrize("culprit", [Sqrt, NanBackward])
def test_finite_forward_nan_backward_names_the_layer(culprit: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(zero_linear(3, 4), culprit(), nn.Linear(4, 1))  # culprit's input is exactly 0
    origin = nonfinite_origin(net, mse_of(net, torch.randn(5, 3)))
    assert (origin.module, origin.phase, origin.what) == ("1", "backward", "grad_input")


def test_inf_weights_in_lstm_stack_name_that_lstm() -> None:
    torch.manual_seed(0)
    model = Stack()
    with torch.no_grad():
        model.lstm_1.weight_hh_l0.fill_(float("inf"))
    origin = nonfinite_origin(model, mse_of(model, torch.randn(2, 6, 3)))
    assert (origin.module, origin.phase, origin.module_type) == ("lstm_1", "forward", "LSTM")
    assert origin.what == "output (non-finite parameters: weight_hh_l0)"
    assert origin.step_in_order == 1  # lstm_0 returned before it


def test_healthy_model_none_no_hooks_left_grads_weights_buffers_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Stack(), nn.BatchNorm1d(1), nn.Dropout(0.5))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model[0].eval()  # mixed modes come back as they were
    loss_of = mse_of(model, torch.randn(4, 6, 3))
    rng = torch.get_rng_state()
    assert nonfinite_origin(model, loss_of) is None
    assert hooks_left(model) == []
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # incl. BatchNorm statistics
    assert [m.training for m in model.modules()] == [True, False, False, False, False, True, True]
    assert torch.equal(torch.get_rng_state(), rng)  # the replay's dropout mask left training's stream alone


def test_hooks_removed_and_modes_restored_on_error() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 1))  # shape mismatch in the second layer
    net.eval()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        nonfinite_origin(net, mse_of(net, torch.randn(2, 3)))
    assert hooks_left(net) == [] and not any(m.training for m in net.modules())


def test_inplace_relu_is_skipped_and_the_backward_origin_still_found() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), zero_linear(4, 4), Sqrt(), nn.Linear(4, 1))
    origin = nonfinite_origin(net, mse_of(net, torch.randn(5, 3)))
    assert (origin.module, origin.phase, origin.what) == ("3", "backward", "grad_input")
    assert hooks_left(net) == []


class InplaceOnEarlierOutput(nn.Module):
    """An in-place op in the container's code on the output of a module that is not the last returned."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.zero = nn.Linear(3, 4), nn.Linear(3, 4), zero_linear(4, 4)
        self.sqrt, self.head = Sqrt(), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        a.relu_()
        return self.head(self.sqrt(self.zero(a + b)))


def test_inplace_on_an_earlier_output_skips_wider_and_still_names_the_layer() -> None:
    torch.manual_seed(0)
    model = InplaceOnEarlierOutput()
    origin = nonfinite_origin(model, mse_of(model, torch.randn(5, 3)))
    assert (origin.module, origin.phase, origin.what) == ("sqrt", "backward", "grad_input")
    assert hooks_left(model) == []


def test_own_code_of_a_container_input_batch_and_loss() -> None:
    torch.manual_seed(0)
    model = DivideByZero()
    origin = nonfinite_origin(model, mse_of(model, torch.randn(2, 2)))
    expected = ("", "forward", "input of 'outer' (made outside any submodule)", "DivideByZero")
    assert (origin.module, origin.phase, origin.what, origin.module_type) == expected
    net = nn.Linear(2, 1)
    x = torch.tensor([[1.0, float("nan")]])
    assert nonfinite_origin(net, mse_of(net, x)) == Origin(INPUT, "forward", "input of ''", 0)
    assert nonfinite_origin(net, lambda: net(torch.ones(1, 2)).sum() / 0.0) == Origin(LOSS, "forward", "loss", 1)
    y = net(torch.ones(1, 2)).detach()  # sqrt(mse) at a perfect prediction: finite loss, inf derivative
    origin = nonfinite_origin(net, lambda: nn.functional.mse_loss(net(torch.ones(1, 2)), y).sqrt())
    assert (origin.module, origin.phase) == (LOSS, "backward")
    assert origin.what == "gradient of the loss w.r.t. the output of ''"


def test_train_only_blowup_not_reproduced_in_eval_mode() -> None:
    net = nn.Sequential(nn.Linear(3, 4), Blowup(train_only=True), nn.Linear(4, 1)).train()
    loss_of = mse_of(net, torch.randn(5, 3))
    assert nonfinite_origin(net, loss_of).module == "1"
    assert nonfinite_origin(net, loss_of, eval_mode=True) is None
    assert all(m.training for m in net.modules())


def test_error_after_a_forward_origin_still_names_it() -> None:
    class Check(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not torch.isfinite(x).all():
                raise ValueError("non-finite activations")
            return x

    net = nn.Sequential(nn.Linear(3, 4), Blowup(), Check(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="non-finite activations"):
        net(torch.randn(2, 3))
    assert nonfinite_origin(net, mse_of(net, torch.randn(2, 3))).module == "1"
    assert hooks_left(net) == []


def test_loss_of_must_return_a_scalar() -> None:
    net = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="one-element tensor"):
        nonfinite_origin(net, lambda: net(torch.ones(1, 2)))
