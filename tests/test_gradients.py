"""layer_grad_norms against arithmetic and an independent autograd computation."""

import math

import torch
from torch import nn

from lstm_grad.gradients import clipped_total, layer_grad_norms
from lstm_grad.model import ResidualLSTM


def test_norm_of_known_gradients_is_arithmetic():
    net = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(1, 1))
    net[0].weight.grad = torch.tensor([[-1.0, 2.0, -3.0]])
    net[1].weight.grad = torch.tensor([[4.0]])
    net[1].bias.grad = torch.tensor([0.0])
    norms = {k: v.item() for k, v in layer_grad_norms(net).items()}
    assert math.isclose(norms["0"], math.sqrt(14.0), rel_tol=1e-7)
    assert norms["1"] == 4.0
    assert math.isclose(norms["total"], math.sqrt(30.0), rel_tol=1e-7)


def test_layers_without_gradients_report_zero_and_scale_divides():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[1].weight.grad = torch.full((1, 2), 3.0)
    norms = layer_grad_norms(net, scale=2.0)
    assert norms["0"].item() == 0.0
    assert math.isclose(norms["1"].item(), math.sqrt(18.0) / 2, rel_tol=1e-7)


def independent_norms(net: nn.Module, loss: torch.Tensor) -> dict[str, float]:
    """Per-layer norms from torch.autograd.grad, in float64, without .grad or foreach."""
    names = [n for n, _ in net.named_parameters()]
    grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    squares: dict[str, float] = {}
    for name, grad in zip(names, grads):
        layer = name.split(".")[0]
        squares[layer] = squares.get(layer, 0.0) + float((grad.double() ** 2).sum())
    squares["total"] = sum(squares.values())
    return {k: math.sqrt(v) for k, v in squares.items()}


def test_matches_autograd_on_residual_lstm_and_differs_from_weight_norms():
    torch.manual_seed(0)
    net = ResidualLSTM(5, hidden_sizes=(8, 8, 4), dropout=0.0)
    x, y = torch.randn(6, 12, 5), torch.randn(6, 1)
    loss = nn.functional.mse_loss(net(x), y)
    expected = independent_norms(net, loss)
    loss.backward()
    ours = {k: v.item() for k, v in layer_grad_norms(net).items()}
    assert set(ours) == {"lstm_0", "lstm_1", "lstm_2", "proj_2", "head", "total"}
    for key, value in expected.items():
        assert math.isclose(ours[key], value, rel_tol=1e-6), key
    weight_norm = torch.linalg.vector_norm(torch.cat([p.flatten() for p in net.lstm_2.parameters()]))
    assert not math.isclose(ours["lstm_2"], weight_norm.item(), rel_tol=1e-2)


def test_total_equals_clip_grad_norm_return_and_clipped_total_matches_clipping():
    torch.manual_seed(1)
    net = ResidualLSTM(3, hidden_sizes=(6, 6), dropout=0.0)
    loss = 100 * net(torch.randn(4, 9, 3)).square().mean()
    loss.backward()
    total = layer_grad_norms(net)["total"].item()
    returned = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0).item()
    assert math.isclose(total, returned, rel_tol=1e-6)
    after = layer_grad_norms(net)["total"].item()
    assert math.isclose(clipped_total(total, 1.0), after, rel_tol=1e-5)
    assert after <= 1.0 + 1e-6 and clipped_total(total, None) == total
