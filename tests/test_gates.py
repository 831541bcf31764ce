"""Gate saturation of nn.LSTM / nn.GRU: recomputed gates against torch's own cells, planted pathologies."""

from __future__ import annotations

from types import SimpleNamespace
from unittest.mock import patch

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_grad import TimeGradientProbe
from lstm_grad.diagnostics.gates import gate_saturation, recompute_gates
from lstm_grad.diagnostics.groups import parameter_groups

B, T, F_IN, H = 3, 7, 4, 5


def _pre(j: int, xt: Tensor, h: Tensor, weights: tuple) -> tuple[Tensor, Tensor]:
    """Gate j's input and hidden terms, W_i x + b_i and W_h h + b_h, from rows j*H..(j+1)*H."""
    w_ih, w_hh, b_ih, b_hh = weights
    rows = slice(j * H, (j + 1) * H)
    return (xt @ w_ih[rows].T + (b_ih[rows] if b_ih is not None else 0),
            h @ w_hh[rows].T + (b_hh[rows] if b_hh is not None else 0))


def _reference(module: nn.LSTM | nn.GRU, x: Tensor, hx) -> list[dict[str, Tensor]]:
    """Every layer's gates and hidden sequence from an ``nn.LSTMCell`` / ``nn.GRUCell`` loop, each gate
    from its own slice of rows fed the cell's h_{t-1}. x (B, T, F) batch first, hx (L*D, B, .)."""
    lstm, n_dir = isinstance(module, nn.LSTM), 2 if module.bidirectional else 1
    h0, c0 = hx if lstm else (hx, None)
    sigmoid, tanh = torch.sigmoid, torch.tanh
    seq, layers = x, []
    for k in range(module.num_layers):
        runs = []
        for d in range(n_dir):
            sfx = f"_l{k}" + "_reverse" * d
            w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
            b_ih, b_hh = getattr(module, "bias_ih" + sfx, None), getattr(module, "bias_hh" + sfx, None)
            w_hr = getattr(module, "weight_hr" + sfx, None)
            weights = (w_ih, w_hh, b_ih, b_hh)
            width = w_hh.shape[1]  # P with proj_size, else H
            cell = (nn.LSTMCell if lstm else nn.GRUCell)(seq.shape[-1] + (width if w_hr is not None else 0), H,
                                                        bias=module.bias)
            if w_hr is None:
                cell.load_state_dict({"weight_ih": w_ih, "weight_hh": w_hh,
                                      **({"bias_ih": b_ih, "bias_hh": b_hh} if module.bias else {})})
            else:  # LSTMCell has no proj_size: feed [x, h] through weight_ih = [W_ih, W_hh], weight_hh = 0
                cell.load_state_dict({"weight_ih": torch.cat([w_ih, w_hh], dim=1), "weight_hh": torch.zeros(4 * H, H),
                                      **({"bias_ih": b_ih, "bias_hh": b_hh} if module.bias else {})})

            h, c = h0[k * n_dir + d], (c0[k * n_dir + d] if lstm else None)
            xs = seq.flip(1) if d else seq
            out: dict[str, list[Tensor]] = {}
            for t in range(T):
                xt = xs[:, t]
                if lstm:
                    (i, f, g, o) = (sum(_pre(j, xt, h, weights)) for j in range(4))
                    gates = {"input": sigmoid(i), "forget": sigmoid(f), "cell": tanh(g), "output": sigmoid(o)}
                    if w_hr is None:
                        h, c = cell(xt, (h, c))
                    else:
                        h, c = cell(torch.cat([xt, h], dim=-1), (torch.zeros(B, H), c))
                        h = h @ w_hr.T  # (B, H) -> (B, P)
                else:
                    (a_r, b_r), (a_z, b_z), (a_n, b_n) = (_pre(j, xt, h, weights) for j in range(3))
                    r = sigmoid(a_r + b_r)
                    gates = {"reset": r, "update": sigmoid(a_z + b_z), "new": tanh(a_n + r * b_n)}
                    h = cell(xt, h)
                for name, value in {**gates, "h": h}.items():
                    out.setdefault(name, []).append(value)
            run = {name: torch.stack(v, dim=1) for name, v in out.items()}
            runs.append({name: v.flip(1) for name, v in run.items()} if d else run)
        layers.append({name: torch.cat([r[name] for r in runs], dim=-1) for name in runs[0]})
        seq = layers[-1]["h"]
    return layers


CASES = {  # id: (kind, kwargs)
    "lstm-1": (nn.LSTM, {"batch_first": True}),
    "lstm-2-seqfirst": (nn.LSTM, {"num_layers": 2}),
    "lstm-2-bidir": (nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    "lstm-proj": (nn.LSTM, {"num_layers": 2, "proj_size": 3, "batch_first": True}),
    "lstm-proj-bidir-seqfirst": (nn.LSTM, {"num_layers": 2, "proj_size": 2, "bidirectional": True}),
    "lstm-nobias": (nn.LSTM, {"num_layers": 2, "bias": False, "batch_first": True}),
    "gru-1": (nn.GRU, {"batch_first": True}),
    "gru-2-seqfirst": (nn.GRU, {"num_layers": 2}),
    "gru-2-bidir": (nn.GRU, {"num_layers": 2, "bidirectional": True}),
    "gru-nobias": (nn.GRU, {"num_layers": 2, "bias": False, "batch_first": True, "bidirectional": True}),
}


def _states(module: nn.LSTM | nn.GRU, scale: float, gen: torch.Generator):
    n = module.num_layers * (2 if module.bidirectional else 1)
    h0 = scale * torch.randn(n, B, module.proj_size or H, generator=gen)
    return (h0, scale * torch.randn(n, B, H, generator=gen)) if isinstance(module, nn.LSTM) else h0


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-hx", "given-hx"])
def test_recomputed_gates_equal_a_cell_loop_and_the_module_output(case: str, with_hx: bool) -> None:
    kind, kwargs = CASES[case]
    torch.manual_seed(0)
    module = kind(F_IN, H, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, F_IN, generator=gen)  # batch first
    hx = _states(module, 0.5 if with_hx else 0.0, gen)
    x_in = x if module.batch_first else x.transpose(0, 1)  # (B, T, F) -> (T, B, F)
    got = recompute_gates(module, x_in, hx if with_hx else None)
    with torch.no_grad():
        want = _reference(module, x, hx)
        output, _ = module(x_in, hx)
    assert len(got) == len(want) == module.num_layers
    for k, (layer, ref) in enumerate(zip(got, want)):
        assert sorted(layer) == sorted(ref), k
        for name in ref:
            assert layer[name].shape == ref[name].shape, (k, name)
            torch.testing.assert_close(layer[name], ref[name], atol=1e-5, rtol=0, msg=f"layer {k} {name}")
    last = got[-1]["h"] if module.batch_first else got[-1]["h"].transpose(0, 1)
    torch.testing.assert_close(last, output, atol=1e-5, rtol=0)


def test_forget_gate_read_off_lstm_cell_itself() -> None:
    # c' = f * c + i * g, so f = c'(c = 1) - c'(c = 0): the forget gate as torch's own cell computes it
    torch.manual_seed(0)
    lstm = nn.LSTM(F_IN, H, batch_first=True)
    cell = nn.LSTMCell(F_IN, H)
    cell.load_state_dict({name[:-3]: p for name, p in lstm.state_dict().items()})  # weight_ih_l0 -> weight_ih
    x = torch.randn(B, T, F_IN)
    (layer,) = recompute_gates(lstm, x)
    h_prev = torch.cat([torch.zeros(B, 1, H), layer["h"][:, :-1]], dim=1)  # h_{t-1}, (B, T, H)
    with torch.no_grad():
        for t in range(T):
            _, c_one = cell(x[:, t], (h_prev[:, t], torch.ones(B, H)))
            _, c_zero = cell(x[:, t], (h_prev[:, t], torch.zeros(B, H)))
            torch.testing.assert_close(layer["forget"][:, t], c_one - c_zero, atol=1e-5, rtol=0)


def test_unbatched_input_matches_the_module() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(F_IN, H, num_layers=2, bidirectional=True)
    x, h0 = torch.randn(T, F_IN), torch.randn(4, H)  # unbatched (T, F), states (D*L, H)
    layers = recompute_gates(gru, x, h0)
    with torch.no_grad():
        output, _ = gru(x, h0)
    assert layers[1]["update"].shape == (1, T, 2 * H)
    torch.testing.assert_close(layers[-1]["h"].squeeze(0), output, atol=1e-5, rtol=0)


def _lstm_with_forget_bias(bias: float) -> nn.LSTM:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 64, batch_first=True)
    with torch.no_grad():
        lstm.bias_ih_l0[64:128].fill_(bias)  # rows i, f, g, o: the forget gate's block
    return lstm


def test_planted_closed_and_open_forget_gate() -> None:
    x = torch.randn(8, 60, 5, generator=torch.Generator().manual_seed(0))
    closed = gate_saturation(_lstm_with_forget_bias(-20.0), x)
    opened = gate_saturation(_lstm_with_forget_bias(20.0), x)
    # measured: exactly 1.0 / 0.0 (|other pre-activation terms| < 3 on this input), other gates 0.0
    assert closed["lstm/forget_closed"] == pytest.approx(1.0) and closed["lstm/forget_open"] == 0.0
    assert opened["lstm/forget_open"] == pytest.approx(1.0) and opened["lstm/forget_closed"] == 0.0
    assert closed["lstm/forget"] == opened["lstm/forget"] == pytest.approx(1.0)
    assert closed["lstm/input"] < 0.01 and opened["lstm/output"] < 0.01


def test_planted_gru_update_gate_open() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(5, 16, batch_first=True)
    with torch.no_grad():
        gru.bias_hh_l0[16:32].fill_(20.0)  # rows r, z, n: z ~ 1 keeps the old state forever
    shares = gate_saturation(gru, torch.randn(8, 60, 5))
    assert shares["gru/update_open"] == pytest.approx(1.0) and shares["gru/update_closed"] == 0.0
    assert shares["gru/reset"] < 0.01


def test_healthy_default_lstm_is_not_saturated_and_unscaled_input_is() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 64, batch_first=True)
    x = torch.randn(8, 60, 5, generator=torch.Generator().manual_seed(0))
    healthy = gate_saturation(lstm, x)
    # measured: 0.0 for every key (torch's U(-1/8, 1/8) init keeps pre-activations within about +-2)
    assert set(healthy) == {f"lstm/{k}" for k in ("input", "input_closed", "input_open", "forget",
                                                  "forget_closed", "forget_open", "output")}
    assert max(healthy.values()) < 0.01
    # prices fed unscaled (x 100): measured input 0.84, forget 0.86, output 0.85, closed ~ open ~ 0.42
    unscaled = gate_saturation(lstm, 100 * x)
    assert min(unscaled[f"lstm/{g}"] for g in ("input", "forget", "output")) > 0.7
    assert unscaled["lstm/forget"] == pytest.approx(unscaled["lstm/forget_closed"] + unscaled["lstm/forget_open"])


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(F_IN, H, num_layers=2, batch_first=True, dropout=0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = Encoder(), nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)[:, -1])


def test_layer_inside_a_container_restores_mode_and_hooks() -> None:
    torch.manual_seed(0)
    model = Nested().train()
    x = torch.randn(B, T, F_IN)
    shares = gate_saturation(model, x)
    # the parameter groups' names (was "rnn.l0", "rnn.l1": recurrent_layers dropped the prefix "encoder.")
    assert {key.split("/")[0] for key in shares} == {"encoder.rnn.l0", "encoder.rnn.l1"}
    assert {key.split("/")[0] for key in shares} == set(parameter_groups(model).names) - {"head"}
    assert model.training and model.encoder.rnn.training
    assert not model.encoder.rnn._forward_hooks and not model.encoder.rnn._forward_pre_hooks
    assert shares == gate_saturation(model, x, layers=["encoder.rnn"])  # named as given: the same path
    by_name = gate_saturation(model, x, layers={"rnn": model.encoder.rnn})  # no dropout: eval mode
    assert shares == {f"encoder.{key}": v for key, v in by_name.items()}


class Both(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(F_IN, H, batch_first=True)
        self.gru = nn.GRU(H, H, num_layers=2, batch_first=True)
        self.head = nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(self.lstm(x)[0])[0][:, -1])


def test_lstm_and_gru_in_one_model_named_as_the_parameter_groups() -> None:
    torch.manual_seed(0)
    model = Both()
    shares = gate_saturation(model, torch.randn(B, T, F_IN))
    lstm_keys = {f"lstm/{k}" for k in ("input", "input_closed", "input_open", "forget", "forget_closed",
                                       "forget_open", "output")}
    gru_keys = {f"gru.l{k}/{g}" for k in (0, 1) for g in ("reset", "update", "update_closed", "update_open")}
    assert set(shares) == lstm_keys | gru_keys
    assert all(0.0 <= v <= 1.0 for v in shares.values())
    assert {key.split("/")[0] for key in shares} == set(parameter_groups(model).names) - {"head"}


class Stack(nn.Module):
    """The clinic's model: single-layer LSTMs in ``layers`` (a ModuleList) and a head, inside a wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTM(F_IN if i == 0 else H, H, batch_first=True) for i in range(3))
        self.head = nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)[0]
        return self.head(x[:, -1])


def test_gate_layers_are_named_as_the_gradient_groups_of_a_stack_in_a_wrapper() -> None:
    torch.manual_seed(0)
    wrapper = nn.ModuleDict({"net": Stack()})  # as a LightningModule holding self.net
    wrapper.forward = wrapper["net"].forward  # type: ignore[method-assign]
    wrapper["net"].layers[1].requires_grad_(False)  # a frozen layer keeps its group and its gate name
    shares = gate_saturation(wrapper, torch.randn(B, T, F_IN))
    # recurrent_layers alone would say "0", "1", "2": the prefix "net.layers." is shared by the LSTMs only
    assert [key.split("/")[0] for key in shares][::7] == ["layers.0", "layers.1", "layers.2"]
    assert parameter_groups(wrapper, "auto", trainable_only=False).names == ["layers.0", "layers.1", "layers.2",
                                                                             "head"]


class GivenState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(F_IN, H, batch_first=True)
        self.h0 = nn.Parameter(torch.full((1, 1, H), 0.9))
        self.c0 = nn.Parameter(torch.full((1, 1, H), 30.0))  # tanh(c) ~ 1: output is the output gate

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        return self.lstm(x, hx=(self.h0.expand(1, n, H).contiguous(), self.c0.expand(1, n, H).contiguous()))[0]


def test_hx_the_forward_passes_is_used() -> None:
    torch.manual_seed(0)
    model = GivenState()
    x = torch.randn(B, T, F_IN)
    hx = (model.h0.detach().expand(1, B, H), model.c0.detach().expand(1, B, H))
    (layer,) = recompute_gates(model.lstm, x, hx)
    closed = (layer["forget"] < 0.05).double().mean().item()
    assert gate_saturation(model, x)["lstm/forget_closed"] == pytest.approx(closed)
    (zero_start,) = recompute_gates(model.lstm, x)
    assert not torch.allclose(zero_start["h"], layer["h"], atol=1e-3)  # so ignoring hx would have shown


def test_a_module_called_twice_is_pooled() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(F_IN, H, batch_first=True)
    x = torch.randn(B, T, F_IN)
    twice = nn.ModuleDict({"lstm": lstm})
    twice.forward = lambda inp: (lstm(inp), lstm(100 * inp))  # type: ignore[method-assign]
    one, hundred = gate_saturation(lstm, x), gate_saturation(lstm, 100 * x)
    pooled = gate_saturation(twice, x)
    for key in one:
        assert pooled[key] == pytest.approx((one[key] + hundred[key]) / 2)


class Doubled(nn.LSTM):
    def forward(self, x, hx=None):  # not torch's forward: the recomputed gates would describe another net
        out, state = super().forward(x, hx)
        return 2 * out + 1, state


def test_refusals() -> None:
    torch.manual_seed(0)
    x = torch.randn(B, T, F_IN)
    lstm = nn.LSTM(F_IN, H, batch_first=True)
    with pytest.raises(ValueError, match="low=0.5, high=0.5"):
        gate_saturation(lstm, x, low=0.5, high=0.5)
    with pytest.raises(ValueError, match=r"layers\['rnn'\] is a RNN"):
        gate_saturation(nn.RNN(F_IN, H), x, layers={"rnn": nn.RNN(F_IN, H)})
    with pytest.raises(ValueError, match="PackedSequence"):
        gate_saturation(lstm, pack_padded_sequence(x, [T, T - 1, 2], batch_first=True))
    with pytest.raises(ValueError, match="do not reproduce"):
        gate_saturation(Doubled(F_IN, H, batch_first=True), x)


def test_no_gated_layer_returns_empty_without_a_forward() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.RNN(F_IN, H), nn.Linear(H, 1)

        def forward(self, x: Tensor) -> Tensor:
            raise AssertionError("gate_saturation must not run a model without gates")

    assert gate_saturation(Plain(), torch.randn(B, T, F_IN)) == {}


class TwoBodies(pl.LightningModule):
    """A 2-layer LSTM with dropout between layers (recomputed layer by layer, eval mode matters) into a
    single-layer GRU (gates from its output in one shot), last step into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(F_IN, H, num_layers=2, dropout=0.5, batch_first=True)
        self.gru = nn.GRU(H, H, batch_first=True)
        self.head = nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(self.lstm(x)[0])[0][:, -1])


def test_the_probe_reads_the_gates_in_its_own_forward_with_the_values_of_a_separate_one() -> None:
    torch.manual_seed(0)
    model = TwoBodies().train()
    x, y = 3 * torch.randn(8, T, F_IN), torch.randn(8, 1)
    probe = TimeGradientProbe(probe_batch=(x, y))
    trainer = SimpleNamespace(loggers=[], global_step=7, is_global_zero=True)
    calls = []
    with patch.object(TwoBodies, "forward", autospec=True, side_effect=lambda m, inp: calls.append(1) or
                      m.head(m.gru(m.lstm(inp)[0])[0][:, -1])):
        logged = probe.probe(trainer, model)
    assert len(calls) == 1  # one forward for the input gradient and the gates together
    assert model.training  # the probe ran in eval mode and gave the mode back
    separate = gate_saturation(model, x)  # its own eval-mode forward under no_grad
    assert {k.removeprefix("gate_sat/"): v for k, v in logged.items() if k.startswith("gate_sat/")} == separate
    assert set(separate) >= {"lstm.l0/forget", "lstm.l1/forget_closed", "gru/update_open"}
    assert probe.gate_history["lstm.l1/forget"] == {7: separate["lstm.l1/forget"]}
