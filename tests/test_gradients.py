"""Pure-torch diagnostics: group rules on modules lstm-grad does not define, norms against arithmetic and
an independent float64 autograd computation, the post-clip total, the logged tags, the health rules."""

import math

import pytest
import torch
from torch import nn

from lstm_grad.diagnostics import group_names, layer_grad_norms, parameter_groups, tag_scalars, total_grad_norm
from lstm_grad.diagnostics.health import GradientHealth
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


def test_groups_without_gradients_report_zero_scale_divides_and_bf16_is_reduced_in_float32():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[1].weight.grad = torch.full((1, 2), 3.0)
    norms = layer_grad_norms(net, scale=2.0)
    assert norms["0"].item() == 0.0
    assert math.isclose(norms["1"].item(), math.sqrt(18.0) / 2, rel_tol=1e-7)
    low = nn.Linear(1000, 1, bias=False).to(torch.bfloat16)  # a bf16-true model: bf16 gradients
    low.weight.grad = torch.ones(1, 1000, dtype=torch.bfloat16)
    norm = layer_grad_norms(nn.Sequential(low))["0"]  # sqrt(1000) = 31.6228; bf16 would round it to 31.625
    assert norm.dtype == torch.float32 and math.isclose(norm.item(), math.sqrt(1000), rel_tol=1e-6)


class UserNet(nn.Module):
    """Modules lstm-grad does not define: a bidirectional 2-layer LSTM, a GRU, a Transformer encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(8, 5, batch_first=True)
        layer = nn.TransformerEncoderLayer(5, nhead=1, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(5, 1)
        self.scale = nn.Parameter(torch.tensor(1.5))  # registered on the root module itself

    def forward(self, x):
        h = self.enc(self.gru(self.rnn(x)[0])[0])  # (B, T, 5)
        return self.scale * self.head(h[:, -1])


def expected_auto(name: str) -> str:
    """The "auto" rule written out by hand for UserNet."""
    if name.startswith("rnn."):
        return "rnn.l" + name.split("_l")[1][0]  # weight_ih_l1_reverse -> rnn.l1
    return name.rsplit(".", 1)[0] if "." in name else name


RULES = {
    "auto": expected_auto,
    "children": lambda n: n.split(".")[0],
    3: lambda n: ".".join(expected_auto(n).split(".")[:3]),
    "regex": lambda n: "recurrent" if n.startswith(("rnn", "gru")) else "attention" if "attn" in n else "other",
}
REGEX = {"recurrent": r"^(rnn|gru)\.", "attention": r"self_attn"}


@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_matches_float64_autograd_on_user_modules(rule):
    torch.manual_seed(0)
    net = UserNet()
    x, y = torch.randn(4, 6, 3), torch.randn(4, 1)
    names = [n for n, _ in net.named_parameters()]
    double = UserNet().double()
    double.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    loss64 = nn.functional.mse_loss(double(x.double()), y.double())
    grads = torch.autograd.grad(loss64, list(double.parameters()))
    squares: dict[str, float] = {}
    for name, grad in zip(names, grads):
        key = RULES[rule](name)
        squares[key] = squares.get(key, 0.0) + float(grad.square().sum())
    nn.functional.mse_loss(net(x), y).backward()
    ours = {k: v.item() for k, v in layer_grad_norms(net, REGEX if rule == "regex" else rule).items()}
    assert set(ours) == set(squares) | {"total"}
    for key, value in squares.items():
        assert math.isclose(ours[key], math.sqrt(value), rel_tol=1e-5), key
    assert math.isclose(ours["total"], math.sqrt(sum(squares.values())), rel_tol=1e-5)


def test_auto_names_drop_the_shared_prefix_and_split_multi_layer_rnns():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.ModuleDict({"net": nn.LSTM(4, 16, num_layers=3), "head": nn.Linear(16, 1)})

    assert parameter_groups(Wrapped()).names == ["net.l0", "net.l1", "net.l2", "head"]
    forecaster = nn.ModuleDict({"model": ResidualLSTM(5, hidden_sizes=(8, 8, 8, 4))})
    assert parameter_groups(forecaster).names == ["lstm_0", "lstm_1", "lstm_2", "lstm_3", "proj_3", "head"]
    single = nn.ModuleDict({"net": nn.GRU(2, 3), "head": nn.Linear(3, 1)})  # one layer: no .l0 split
    assert parameter_groups(single).names == ["net", "head"]
    frozen = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    frozen[0].requires_grad_(False)
    assert parameter_groups(frozen).names == ["1"]  # a frozen layer is no group (it would look vanished)


def test_bad_rules_are_one_clear_error():
    names = ["enc.weight", "head.weight"]
    with pytest.raises(ValueError, match="groups='layers' is unknown"):
        group_names(names, "layers")
    with pytest.raises(ValueError, match="groups=0 is not a depth"):
        group_names(names, 0)
    with pytest.raises(ValueError, match=r"groups\['x'\] = 'nothing' matches no trainable parameter"):
        group_names(names, {"x": "nothing"})
    with pytest.raises(ValueError, match=r"groups\['x'\] = '\(' is not a regular expression"):
        group_names(names, {"x": "("})
    with pytest.raises(ValueError, match="a parameter group is named 'total'"):
        group_names(["total.weight", "head.weight"])


def test_matches_autograd_on_residual_lstm_and_differs_from_weight_norms():
    torch.manual_seed(0)
    net = ResidualLSTM(5, hidden_sizes=(8, 8, 4), dropout=0.0)
    x, y = torch.randn(6, 12, 5), torch.randn(6, 1)
    loss = nn.functional.mse_loss(net(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    squares: dict[str, float] = {}
    for (name, _), grad in zip(net.named_parameters(), grads):
        squares[name.split(".")[0]] = squares.get(name.split(".")[0], 0.0) + float(grad.double().square().sum())
    loss.backward()
    ours = {k: v.item() for k, v in layer_grad_norms(net).items()}
    assert set(ours) == {"lstm_0", "lstm_1", "lstm_2", "proj_2", "head", "total"}
    for key, value in squares.items():
        assert math.isclose(ours[key], math.sqrt(value), rel_tol=1e-6), key
    weight_norm = torch.linalg.vector_norm(torch.cat([p.flatten() for p in net.lstm_2.parameters()]))
    assert not math.isclose(ours["lstm_2"], weight_norm.item(), rel_tol=1e-2)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_post_clip_total_is_measured_whatever_the_algorithm(algorithm):
    torch.manual_seed(1)
    net = ResidualLSTM(3, hidden_sizes=(6, 6), dropout=0.0)
    (100 * net(torch.randn(4, 9, 3)).square().mean()).backward()
    total = layer_grad_norms(net)["total"].item()
    if algorithm == "norm":
        assert math.isclose(total, torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0).item(), rel_tol=1e-6)
        expected = 1.0
    else:
        clipped = [p.grad.double().clamp(-1e-3, 1e-3) for p in net.parameters()]
        torch.nn.utils.clip_grad_value_(net.parameters(), 1e-3)
        expected = math.sqrt(sum(float(g.square().sum()) for g in clipped))
    after = total_grad_norm(net.parameters()).item()
    assert math.isclose(after, expected, rel_tol=1e-5) and after < total
    tags = tag_scalars(layer_grad_norms(net), torch.tensor(after))
    assert tags["grad_health/clipped"] == 0.0  # measured again after clipping: nothing left to clip
    assert tag_scalars({"a": 2.0, "total": 2.0}, 0.5)["grad_health/clipped"] == 1.0


def test_tags_leave_nonfinite_norms_out_and_flag_the_step():
    tags = tag_scalars({"a": torch.tensor(float("nan")), "b": torch.tensor(3.0), "total": torch.tensor(float("nan"))},
                       torch.tensor(1.0), rms_numel={"b": 9})
    assert tags == {"grad_norm/b": 3.0, "grad_rms/b": 1.0, "grad_health/nonfinite": 1.0}


def test_health_rules_by_hand():
    health = GradientHealth(vanish_threshold=1e-5, relative_threshold=1e-3, patience=2, explode_threshold=10.0)
    steps = [{"a": 1e-6, "b": 1.0, "c": 5e-4, "total": 1.0}, {"a": 1e-6, "b": 2.0, "c": 1e-3, "total": 20.0},
             {"a": 1e-6, "b": 2.0, "c": 1e-3, "total": 1.0}]
    messages = [health.update(i, s, ["a", "b", "c"]) for i, s in enumerate(steps)]
    assert [len(m) for m in messages] == [0, 3, 0]
    assert messages[1][0].startswith("vanishing gradient in group a at step 1: norm 1e-06 < 1e-05 for 2 logged")
    assert messages[1][1].startswith("vanishing gradient in group c at step 1: norm 0.001 < 0.001 x the largest "
                                     "group's 2 for 2 logged")  # 5e-4 < 1e-3 * 1.0, then 1e-3 < 1e-3 * 2.0
    assert messages[1][2].startswith("exploding gradient at step 1: total norm 20 > 10")
    assert health.low_streak == {"a": 3, "b": 0, "c": 0} and health.relative_streak == {"a": 3, "b": 0, "c": 3}
    assert [health.clip_rate(c) for c in (True, False, False, True)] == [1.0, 0.5, 1 / 3, 0.5]
    restored = GradientHealth()
    restored.load_state_dict(health.state_dict())
    assert restored.state_dict() == health.state_dict()
