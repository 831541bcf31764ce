"""Which parameters' gradients make one logged norm: layer groups for any ``nn.Module``.

Rules (``groups=`` everywhere in this package):

- ``"auto"`` (default): a parameter belongs to the module that directly owns it
  (``"enc.layers.0.linear1.weight"`` -> ``enc.layers.0.linear1``); the parameters of a multi-layer
  ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` are split per layer by their ``_l<k>`` suffix into
  ``<path>.l<k>`` (a bidirectional layer's ``_reverse`` weights stay in that layer); a parameter
  registered on the root module itself is its own group, named by the parameter. Then the longest
  dotted prefix shared by every group is dropped (each name keeps at least one part), so a
  LightningModule holding ``self.model`` logs ``lstm_0``, not ``model.lstm_0``.
- ``"children"``: the first name part after that shared prefix (one group per top-level child).
- an ``int`` k >= 1: the first k name parts after that shared prefix (``2`` on a model with
  ``self.blocks = nn.ModuleList(...)`` gives one group per block instead of one per linear).
- ``{name: regex}``: a parameter's full name (as ``named_parameters`` spells it) goes to the first
  group whose pattern ``re.search``-es it; parameters no pattern matches go to ``"other"``.

By default only parameters with ``requires_grad`` at grouping time count, so a frozen layer is no
group; the monitor groups every parameter and leaves out a group without a gradient at each step
instead (so unfreezing renames nothing). Pure Python over names; nothing here touches a gradient.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from torch import Tensor, nn

GroupRule = Union[int, str, Mapping[str, str]]
RESERVED = ("total", "total_clipped")
OTHER = "other"
# torch's names for a multi-layer RNN's weights: weight_ih_l0, bias_hh_l2_reverse, weight_hr_l1 (proj_size)
RNN_WEIGHT = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_l(\d+)(?:_reverse)?$")


def drop_shared_prefix(paths: Sequence[str]) -> list[str]:
    """Drop the longest dotted prefix every path shares, keeping at least the last part of each.

    >>> drop_shared_prefix(["model.lstm_0", "model.lstm_1", "model.head"])
    ['lstm_0', 'lstm_1', 'head']
    >>> drop_shared_prefix(["model.net", "model"]), drop_shared_prefix(["model.net"])
    (['model.net', 'model'], ['net'])
    """
    parts = [path.split(".") for path in paths]
    if not parts:
        return []
    keep_one = min(len(p) for p in parts) - 1  # never drop the last part of the shortest path
    shared = 0
    while shared < keep_one and len({p[shared] for p in parts}) == 1:
        shared += 1
    return [".".join(p[shared:]) for p in parts]


def owner_paths(param_names: Sequence[str], multi_layer_rnns: Collection[str] | None = None) -> list[str]:
    """Return each parameter's ``"auto"`` path before the shared prefix is dropped.

    ``multi_layer_rnns`` names the modules that are RNNs with ``num_layers > 1``; ``None`` infers
    them from the names alone (an owner with an ``..._l1`` weight), which is how a run's event
    files are grouped without the model.

    >>> owner_paths(["net.weight_ih_l0", "net.bias_hh_l1_reverse", "head.weight", "scale"])
    ['net.l0', 'net.l1', 'head', 'scale']
    """
    split = [name.rpartition(".") for name in param_names]  # (owner, ".", leaf); owner "" = root
    if multi_layer_rnns is None:
        multi_layer_rnns = {owner for owner, _, leaf in split
                            if (m := RNN_WEIGHT.match(leaf)) and int(m.group(1)) > 0}
    paths = []
    for owner, _, leaf in split:
        match = RNN_WEIGHT.match(leaf)
        if not owner:
            paths.append(leaf)
        elif match and owner in multi_layer_rnns:
            paths.append(f"{owner}.l{match.group(1)}")
        else:
            paths.append(owner)
    return paths


def group_names(param_names: Sequence[str], rule: GroupRule = "auto",
                multi_layer_rnns: Collection[str] | None = None) -> list[str]:
    """Return the group of every parameter name under ``rule`` (see the module docstring).

    Raises ``ValueError`` for an unknown rule, a depth < 1, a regex that does not compile or
    matches no parameter, or a group named ``total`` / ``total_clipped`` (those tags are taken).

    >>> names = ["model.enc.0.lin.weight", "model.enc.1.lin.weight", "model.head.bias"]
    >>> group_names(names), group_names(names, 2), group_names(names, "children")
    (['enc.0.lin', 'enc.1.lin', 'head'], ['enc.0', 'enc.1', 'head'], ['enc', 'enc', 'head'])
    >>> group_names(names, {"body": r"\\.enc\\."})
    ['body', 'body', 'other']
    """
    if isinstance(rule, Mapping):
        names = _by_regex(param_names, rule)
    else:
        if isinstance(rule, bool) or not (rule in ("auto", "children") or isinstance(rule, int)):
            raise ValueError(f"groups={rule!r} is unknown; use 'auto', 'children', a depth >= 1 or {{name: regex}}")
        if isinstance(rule, int) and rule < 1:
            raise ValueError(f"groups={rule} is not a depth; use an int >= 1 (1 = one group per top-level child)")
        paths = drop_shared_prefix(owner_paths(param_names, multi_layer_rnns))
        depth = None if rule == "auto" else 1 if rule == "children" else int(rule)
        names = [".".join(path.split(".")[:depth]) for path in paths]
    taken = sorted(set(names) & set(RESERVED))
    if taken:
        raise ValueError(f"a parameter group is named {taken[0]!r}, which is the tag of the summed norm; "
                         "pass groups={name: regex} to name the groups yourself")
    return names


def _by_regex(param_names: Sequence[str], patterns: Mapping[str, str]) -> list[str]:
    compiled = {}
    for name, pattern in patterns.items():
        try:
            compiled[name] = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"groups[{name!r}] = {pattern!r} is not a regular expression: {error}") from None
    names = [next((g for g, rx in compiled.items() if rx.search(p)), OTHER) for p in param_names]
    unused = [g for g in compiled if g not in names]
    if unused:
        raise ValueError(f"groups[{unused[0]!r}] = {patterns[unused[0]]!r} matches no trainable parameter; "
                         f"parameter names look like {list(param_names)[:3]}")
    return names


@dataclass
class ParameterGroups:
    """The groups of one module, fixed when built: ``names`` in first-seen order, and per trainable
    parameter its name, the parameter and its group's index. Build with :func:`parameter_groups`."""

    names: list[str]
    members: list[tuple[str, nn.Parameter, int]]
    index_cache: dict[tuple, Tensor] = field(default_factory=dict, repr=False)  # device index tensors

    def group_of(self, param_name: str) -> str:
        """Name the group a parameter belongs to (``KeyError`` for a frozen or unknown one)."""
        for name, _, index in self.members:
            if name == param_name:
                return self.names[index]
        raise KeyError(param_name)

    def numel(self) -> list[int]:
        """Return the number of gradient elements each group holds."""
        counts = [0] * len(self.names)
        for _, param, index in self.members:
            counts[index] += param.numel()
        return counts


def parameter_groups(module: nn.Module, rule: GroupRule = "auto", trainable_only: bool = True) -> ParameterGroups:
    """Group the trainable parameters of ``module`` under ``rule`` (every parameter with
    ``trainable_only=False``: the monitor's groups, which must not change when a layer is unfrozen).

    >>> net = nn.ModuleDict({"rnn": nn.LSTM(2, 3, num_layers=2), "head": nn.Linear(3, 1)})
    >>> parameter_groups(net).names
    ['rnn.l0', 'rnn.l1', 'head']
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad or not trainable_only]
    if not named:
        raise ValueError(f"{type(module).__name__} has no {'trainable ' if trainable_only else ''}parameters to group")
    rnns = {name for name, sub in module.named_modules() if isinstance(sub, nn.RNNBase) and sub.num_layers > 1}
    labels = group_names([name for name, _ in named], rule, rnns)
    order = list(dict.fromkeys(labels))
    position = {label: i for i, label in enumerate(order)}
    return ParameterGroups(order, [(name, p, position[label]) for (name, p), label in zip(named, labels)])
