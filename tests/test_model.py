"""ResidualLSTM: layer layout, residual arithmetic, and each init mode's promise."""

import pytest
import torch
from torch import nn

from lstm_grad.model import ResidualLSTM, init_recurrent_


def child_names(net: nn.Module) -> list[str]:
    return [name for name, _ in net.named_children() if name != "dropout"]


def test_default_sizes_are_the_recipes_step4_network():
    net = ResidualLSTM(5)
    assert child_names(net) == ["lstm_0", "lstm_1", "lstm_2", "lstm_3", "proj_3", "head"]
    assert [net.skips[n] for n in net.layer_names] == [None, "identity", "identity", "proj_3"]
    assert net.proj_3.weight.shape == (64, 128) and net.head.weight.shape == (1, 64)


def test_forward_equals_hand_built_residual_stack():
    torch.manual_seed(0)
    net = ResidualLSTM(3, hidden_sizes=(4, 4, 2), dropout=0.5, horizon=2).eval()
    x = torch.randn(5, 7, 3)
    h0, _ = net.lstm_0(x)
    h1 = net.lstm_1(h0)[0] + h0
    h2 = net.lstm_2(h1)[0] + net.proj_2(h1)
    expected = net.head(h2[:, -1])
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


def test_without_residual_no_projection_and_plain_stack():
    torch.manual_seed(0)
    net = ResidualLSTM(3, hidden_sizes=(4, 2), residual=False, dropout=0.0).eval()
    assert child_names(net) == ["lstm_0", "lstm_1", "head"]
    x = torch.randn(2, 6, 3)
    expected = net.head(net.lstm_1(net.lstm_0(x)[0])[0][:, -1])
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal_init_makes_every_gate_block_orthogonal(cell, gates, gain):
    torch.manual_seed(1)
    net = ResidualLSTM(5, hidden_sizes=(8, 8), cell=cell, init="orthogonal", gain=gain, forget_bias=1.0)
    eye = torch.eye(8)
    for layer in net.recurrent_layers():
        for block in layer.weight_hh_l0.detach().chunk(gates):  # (H, H)
            torch.testing.assert_close(block @ block.T, gain**2 * eye, atol=1e-5, rtol=0)
        # the stacked matrix as one would be orthogonal only as a whole, not per gate: check blocks differ
        for block in layer.weight_ih_l0.detach().chunk(gates):  # (H, in): orthonormal columns or rows
            small = min(block.shape)
            gram = block.T @ block if block.shape[0] >= block.shape[1] else block @ block.T
            torch.testing.assert_close(gram, gain**2 * torch.eye(small), atol=1e-5, rtol=0)


def test_forget_bias_is_the_only_nonzero_bias():
    net = ResidualLSTM(5, hidden_sizes=(6,), init="orthogonal", forget_bias=1.5)
    total = (net.lstm_0.bias_ih_l0 + net.lstm_0.bias_hh_l0).detach()  # (4H,) gates i, f, g, o
    expected = torch.zeros(24)
    expected[6:12] = 1.5
    torch.testing.assert_close(total, expected, rtol=0, atol=0)


def test_glorot_init_bounds_each_block():
    net = ResidualLSTM(5, hidden_sizes=(6,), init="glorot")
    bound = (6 / (6 + 6)) ** 0.5  # Glorot-uniform bound of one (H, H) gate block
    assert net.lstm_0.weight_hh_l0.abs().max() <= bound
    assert net.lstm_0.weight_hh_l0.abs().max() > 0.5 * bound


def test_default_init_leaves_torch_recurrent_weights_untouched():
    torch.manual_seed(7)
    net = ResidualLSTM(5, hidden_sizes=(8,), init="default")
    torch.manual_seed(7)
    reference = nn.LSTM(5, 8, batch_first=True)
    for ours, theirs in zip(net.lstm_0.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_head_is_glorot_with_zero_bias():
    net = ResidualLSTM(5, hidden_sizes=(64,), horizon=30)
    bound = (6 / (64 + 30)) ** 0.5
    assert net.head.weight.abs().max() <= bound and torch.count_nonzero(net.head.bias) == 0


@pytest.mark.parametrize("kwargs,words", [
    ({"cell": "rnn"}, "cell='rnn' is unknown"),
    ({"init": "he"}, "init='he' is unknown"),
    ({"hidden_sizes": ()}, "at least one positive hidden size"),
    ({"horizon": 0}, "horizon >= 1"),
])
def test_bad_arguments_raise_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ResidualLSTM(5, **kwargs)


def test_init_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown"):
        init_recurrent_(ResidualLSTM(2, hidden_sizes=(3,)), "zeros")


def test_uniform_mask_dropout_keeps_1_minus_p_scales_by_its_inverse_and_back_propagates_the_mask():
    from lstm_grad.forecaster.model import UniformMaskDropout

    drop = UniformMaskDropout(0.2)
    x = torch.randn(64, 60, 128, requires_grad=True)
    torch.manual_seed(0)
    out = drop(x)
    kept = out != 0
    share = kept.double().mean().item()
    assert abs(share - 0.8) < 4 * (0.8 * 0.2 / kept.numel()) ** 0.5  # within 4 binomial sd of 1 - p
    scale = 32768 / (32768 - 6554)  # p = 0.2 is 6554 of 32768 15-bit values: P(keep) = 26214 / 32768
    assert abs(1 / scale - 0.8) < 2**-16
    assert torch.equal(out[kept], x[kept] * scale)  # kept values scaled by 1 / P(keep) exactly
    out.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)  # d out / d x = mask / P(keep), by hand
    torch.manual_seed(0)
    assert torch.equal(drop(x), out)  # the run's seed decides the mask
    assert torch.equal(UniformMaskDropout(1.0)(x), torch.zeros_like(x))  # p = 1: all dropped, no division by 0
    odd = UniformMaskDropout(0.5)(torch.ones(3, 5, 7))  # 105 elements: three of four uniforms of a draw used
    assert odd.shape == (3, 5, 7) and set(odd.unique().tolist()) <= {0.0, 2.0}
    drop.eval()
    assert drop(x) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert UniformMaskDropout(0.5)(x.detach().bfloat16()).dtype == torch.bfloat16
    assert isinstance(ResidualLSTM(n_features=2).dropout, UniformMaskDropout)
