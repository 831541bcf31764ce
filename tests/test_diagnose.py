"""``python -m lstm_grad.diagnose`` prints the numbers its run's event files hold."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from lstm_grad import diagnose
from lstm_grad.diagnostics import GradientMonitor, TimeGradientProbe
from lstm_grad.diagnostics.texts import data_of


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_forecaster, quiet_trainer):
    tmp = tmp_path_factory.mktemp("diagnose")
    data, model = tiny_forecaster(tmp, window=12, hidden_sizes=(6, 5, 4), split=(0.6, 0.2, 0.2))
    logger = TensorBoardLogger(tmp / "runs", name="tiny", default_hp_metric=False)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, log_every_n_steps=1,
                            gradient_clip_val=2.0, logger=logger, callbacks=[GradientMonitor(), TimeGradientProbe()],
                            enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    return logger.log_dir


def raw_scalars(folder) -> dict[str, dict[int, float]]:
    """Read the event file record by record (not through EventAccumulator, which diagnose uses)."""
    from pathlib import Path

    values: dict[str, dict[int, float]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, {})[event.step] = float(value.tensor.float_val[0])
                elif value.HasField("simple_value"):
                    values.setdefault(value.tag, {})[event.step] = value.simple_value
    return values


def table_rows(block: str) -> dict[str, list[str]]:
    """The per-group rows of one run's block: between the column header and the ``clip rate`` line."""
    lines = block.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("group"))
    bottom = next(i for i, line in enumerate(lines) if line.startswith("clip rate"))
    return {line.split()[0]: line.split()[1:] for line in lines[top + 1:bottom]}


def test_diagnose_prints_the_event_files_numbers_then_the_findings(run_dir, capsys, tmp_path):
    raw = raw_scalars(run_dir)
    assert diagnose.main([run_dir, "--png", str(tmp_path / "norms.png")]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == ["lstm_0", "lstm_1", "proj_1", "lstm_2", "proj_2", "head", "total", "total_clipped"]  # model's
    for layer in rows:
        series = [raw[f"grad_norm/{layer}"][s] for s in sorted(raw[f"grad_norm/{layer}"])]
        expected = [f"{series[0]:.3e}", f"{statistics.median(series):.3e}", f"{series[-1]:.3e}", "0"]
        assert rows[layer] == expected, (layer, rows[layer], expected)
    clipped = list(raw["grad_health/clipped"].values())
    reach = [raw["grad_time/reach"][s] for s in sorted(raw["grad_time/reach"])]
    assert 0 < sum(clipped) < len(clipped) and len(reach) == 3
    assert (f"clip rate {sum(clipped) / len(clipped):.1%}; non-finite steps 0; "
            f"time reach (steps) {reach[0]:.0f} -> {reach[-1]:.0f} of 12") in out
    findings = out.split("findings (", 1)[1].split("wrote ")[0].rstrip().splitlines()
    # the depth ratio the rule tests: lstm_0 / lstm_2 (proj_1, proj_2 and the head are not layers), the median
    # over the last half of the logged steps
    first, last = raw["grad_norm/lstm_0"], raw["grad_norm/lstm_2"]
    ratios = [first[s] / last[s] for s in sorted(first)]
    ratio = statistics.median(ratios[len(ratios) // 2:])
    assert findings[-1].startswith("  2. gradients healthy: ")
    assert f"logged_steps {len(first)}, ratio_first_last {ratio:.3g}, clip_rate" in findings[-1]
    # 8 steps on a level target: far worse than persistence (rel MAE ~2.5 > the 1.05 band), not "the data's limit"
    assert findings[1].startswith("  1. [info] worse_than_persistence: gradients are healthy but validation is worse "
                                  "than persistence (best rel MAE ")
    assert (tmp_path / "norms.png").stat().st_size > 1000


def live_findings(folder) -> list[dict]:
    """The findings the monitor wrote when training ended (``doctor/findings``), read record by record."""
    from pathlib import Path

    texts = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "doctor/findings/text_summary":
                    texts.append(value.tensor.string_val[0].decode())
    return data_of(texts[-1])  # the Markdown's values (lstm_grad.diagnostics.texts)


def test_text_tab_shows_tables_and_words_and_keeps_the_values(run_dir):
    """TensorBoard's TEXT tab renders each record as TensorBoard itself does (markdown_to_safe_html): no JSON
    is shown, and the values diagnose reads back are the probe's exact profile."""
    from tensorboard.plugin_util import markdown_to_safe_html

    from lstm_grad.diagnostics.events import load_events

    _, scalars, texts = load_events(run_dir)
    shown = {tag.split("/text_summary")[0]: markdown_to_safe_html(records[-1][1]) for tag, records in texts.items()}
    assert {"grad_time/profile_values", "doctor/context", "doctor/findings"} <= set(shown)
    for tag in ("grad_time/profile_values", "doctor/context", "doctor/findings"):
        assert "{" not in shown[tag] and "lstm-grad data" not in shown[tag], tag
    assert "<table>" in shown["grad_time/profile_values"] and "<td>|dL/dx_t|</td>" in shown["grad_time/profile_values"]
    assert "<td>parameter groups (model order)</td>" in shown["doctor/context"]
    assert "evidence:" in shown["doctor/findings"] and "fix:" in shown["doctor/findings"]
    step, text = texts["grad_time/profile_values/text_summary"][-1]
    entry = data_of(text)
    assert len(entry["profile"]) == 12 and entry["label"] == "epoch 1"
    assert math.isclose(scalars["grad_time/lag_1"][step], entry["profile"][-1], rel_tol=1e-6)
    assert f"reach {scalars['grad_time/reach'][step]:.0f} of 12 steps" in text
    assert data_of(texts["doctor/context/text_summary"][-1][1])["window"] == 12


def test_json_lists_each_runs_findings_as_the_live_doctor_found_them(run_dir, tmp_path, capsys):
    path = tmp_path / "out" / "findings.json"
    assert diagnose.main([run_dir, run_dir, "--json", str(path), "--no-png"]) == 0
    document = json.loads(path.read_text())
    assert list(document) == ["runs"] and [r["run"] for r in document["runs"]] == [run_dir, run_dir]
    findings = document["runs"][0]["findings"]
    for finding in findings:
        assert list(finding) == ["kind", "severity", "groups", "steps", "summary", "fix", "evidence"]
        assert "source" in finding["evidence"]
    ranks = [("error", "warning", "info").index(f["severity"]) for f in findings]
    assert ranks == sorted(ranks)
    live = live_findings(run_dir)  # the monitor's own examine() over its in-memory series, at train end
    assert [(f["kind"], f["groups"]) for f in findings] == [(f["kind"], f["groups"]) for f in live]
    assert [f["kind"] for f in findings] == ["worse_than_persistence", "healthy"]
    assert findings[0]["evidence"]["best_val_rel_mae"] == pytest.approx(live[0]["evidence"]["best_val_rel_mae"])
    assert findings[0]["evidence"]["best_val_rel_mae"] > findings[0]["evidence"]["band"] == 1.05
    assert findings[1]["evidence"]["ratio_first_last"] == pytest.approx(live[1]["evidence"]["ratio_first_last"])
    assert f"wrote {path}" in capsys.readouterr().out


def test_probe_profiles_come_back_for_the_heat_map(run_dir):
    report = diagnose.read_run(run_dir)
    assert [label for _, label, _ in report.profiles] == ["before training", "epoch 0", "epoch 1"]
    raw = raw_scalars(run_dir)
    for step, _, profile in report.profiles:
        assert len(profile) == 12  # the window
        assert profile[-1] == pytest.approx(raw["grad_time/lag_1"][step], rel=1e-6)
        assert profile[-10] == pytest.approx(raw["grad_time/lag_10"][step], rel=1e-6)


class LightningGradNorm(pl.LightningModule):
    """A user's module that logs Lightning's own per-parameter norms, as Lightning's docs show."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.head = torch.nn.GRU(3, 4, num_layers=2, batch_first=True), torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.net(x)[0][:, -1])

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

    def on_before_optimizer_step(self, optimizer):
        if self.log_grad_norm:
            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def user_run(tmp_path, name: str, monitor: bool) -> str:
    pl.seed_everything(0)
    module = LightningGradNorm()
    module.log_grad_norm = not monitor
    x = torch.randn(32, 5, 3, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, -1, :1]), batch_size=8)
    logger = TensorBoardLogger(tmp_path, name=name, default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=1, log_every_n_steps=1, logger=logger, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[GradientMonitor()] if monitor else [])
    trainer.fit(module, loader)
    return logger.log_dir


def test_lightning_grad_norm_tags_are_summed_into_the_same_groups(tmp_path, capsys):
    theirs, ours = user_run(tmp_path, "lightning", monitor=False), user_run(tmp_path, "ours", monitor=True)
    raw = raw_scalars(theirs)
    by_hand: dict[str, dict[int, float]] = {}
    for tag, points in raw.items():
        if tag.startswith("grad_2.0_norm/"):
            param = tag.split("/", 1)[1]
            group = "head" if param.startswith("head") else "net.l" + param.split("_l")[-1][0]
            for step, value in points.items():
                by_hand.setdefault(group, {}).setdefault(step, 0.0)
                by_hand[group][step] += value * value
    report, reference = diagnose.read_run(theirs), diagnose.read_run(ours)
    assert report.source.startswith("lightning") and set(report.norms) == {"net.l0", "net.l1", "head", "total"}
    for group, steps in by_hand.items():
        assert [s for s, _ in report.norms[group]] == sorted(steps) == [0, 1, 2, 3]
        for step, value in report.norms[group]:
            assert value == pytest.approx(steps[step] ** 0.5, rel=1e-9)
            assert value == pytest.approx(dict(reference.norms[group])[step], rel=1e-5)  # = our monitor's
    assert diagnose.main([theirs, "--no-png"]) == 0
    out = capsys.readouterr().out
    assert "from lightning grad_2.0_norm (summed per group)" in out
    verdict = out.split("findings (", 1)[1].splitlines()[-1]  # 4 steps: too few for any rule but the depth ratio
    assert verdict.startswith("  1. gradients healthy: ") and "logged_steps 4" in verdict
    assert diagnose.main([ours, "--no-png"]) == 0  # the same model with GradientMonitor: the same verdict
    ours_verdict = capsys.readouterr().out.split("findings (", 1)[1].splitlines()[-1]
    first, last = dict(reference.norms["net.l0"]), dict(reference.norms["net.l1"])  # the head is not a layer
    ratio = statistics.median([first[s] / last[s] for s in (2, 3)])  # the median over the late half of 4 steps
    for line in (verdict, ours_verdict):  # ours adds the clip rate Lightning's tags cannot say
        assert line.startswith("  1. gradients healthy: ") and f"logged_steps 4, ratio_first_last {ratio:.3g}" in line


def written_run(folder, *, first_layer: float = 1.0, spike_at: int | None = None, nonfinite_at: int | None = None,
                profile_scale: float | None = None, context: dict | None = None) -> str:
    """Write a run the cheap way, as a hand loop would: ``grad_norm/layers.0 .. layers.11``, ``head`` and
    ``total`` on 40 steps (0.5 (1 + 0.05 sin step), layer i x (1 + 0.02 i), ``layers.0`` x ``first_layer``),
    a falling loss; ``spike_at``: ``layers.7`` 30x and the total 10x on that step; ``nonfinite_at``:
    ``grad_health/nonfinite`` 1 there; ``profile_scale``: three probes' profiles 0.3^((20 - t) / 4) x scale;
    ``context``: a ``doctor/context`` text. The layers are written in lexical tag order (0, 1, 10, 11, 2...)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step in range(40):
        wobble = 1 + 0.05 * math.sin(step)
        for i in sorted(range(12), key=str):
            value = 0.5 * wobble * (1 + 0.02 * i) * (first_layer if i == 0 else 1.0)
            writer.add_scalar(f"grad_norm/layers.{i}", value * (30 if step == spike_at and i == 7 else 1), step)
        writer.add_scalar("grad_norm/head", 0.4 * wobble, step)
        writer.add_scalar("grad_norm/total", 2.0 * wobble * (10 if step == spike_at else 1), step)
        writer.add_scalar("train/loss_step", 1 / (1 + 0.05 * step), step)
        writer.add_scalar("grad_health/nonfinite", float(step == nonfinite_at), step)
    for k, label in enumerate(["before training", "epoch 0", "epoch 1"] if profile_scale else []):
        profile = [profile_scale * 0.3 ** ((20 - t) / 4) for t in range(20)]
        writer.add_text("grad_time/profile_values", json.dumps({"label": label, "profile": profile}), 10 * k)
    if context:
        writer.add_text("doctor/context", json.dumps(context), 39)
    writer.close()
    return str(folder)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("written")
    return {"healthy": written_run(tmp / "healthy", profile_scale=1.0),
            "vanishing": written_run(tmp / "vanishing", first_layer=1e-4, spike_at=25, profile_scale=100.0),
            "nonfinite": written_run(tmp / "nonfinite", nonfinite_at=30)}


@pytest.mark.parametrize("run, bare, warning", [("healthy", 0, 0), ("vanishing", 0, 1), ("nonfinite", 1, 1)])
def test_strict_exits_1_on_an_error_and_strict_warning_on_a_warning(written, run, bare, warning, capsys):
    assert diagnose.main([written[run], "--no-png"]) == 0
    assert diagnose.main([written[run], "--no-png", "--strict"]) == bare
    assert diagnose.main(["--strict", written[run], "--no-png"]) == bare  # bare --strict before a RUN_DIR
    assert diagnose.main([written[run], "--no-png", "--strict", "warning"]) == warning
    assert diagnose.main([written[run], "--no-png", "--strict=error"]) == bare
    err = capsys.readouterr().err
    assert ("strict (warning): error or warning findings in" in err) == bool(warning)
    if run == "vanishing":
        assert "(vanishing_depth, exploding)" in err  # ranked: 2.1 decades under 1e-2 before a spike just past 10x


def test_an_unhealthy_run_ends_with_its_ranked_findings(written, capsys):
    assert diagnose.main([written["vanishing"], "--no-png"]) == 0
    out = capsys.readouterr().out
    assert list(table_rows(out)) == [f"layers.{i}" for i in range(12)] + ["head", "total"]
    ratio = (0.5 * 1e-4) / (0.5 * 1.22)  # layers.0 / layers.11, the same wobble on both
    tail = out.split("findings (2, most severe first):\n", 1)[1].splitlines()
    # strength in decades: the ratio is log10(1e-2 / 8.2e-5) = 2.1 past its threshold, the spike (10.006x the
    # median of the 20 steps before) 0.0003 past 10x
    assert tail[0].startswith(f"  1. [warning] vanishing_depth: the gradient fades across depth: layers.0 gets "
                              f"{ratio:.2g}x the gradient of layers.11")
    assert tail[1].startswith(f"      evidence: ratio_first_last {ratio:.3g}, threshold 0.01 (threshold source: ")
    assert tail[2].startswith("      fix: skip (residual) connections")
    assert tail[3] == ("  2. [warning] exploding: the total gradient norm spiked to "
                       f"{20 * (1 + 0.05 * math.sin(25)):.3g} at step 25; layers.7 moved first")
    assert tail[4].startswith("      evidence: total_norm 19.9, spikes 1, sigmas 6, factor 10 (threshold source: "
                              "a value above the mean + 6 sd and 10x the median")
    assert tail[5].startswith("      fix: clip the gradient") and len(tail) == 6


def test_runs_compare_side_by_side_and_threshold_only_sets_the_table_column(run_dir, written, capsys, tmp_path):
    # --threshold used to decide --strict ("vanishing" = any norm under it); now the doctor's findings do
    assert diagnose.main([run_dir, written["vanishing"], "--threshold", "1e3", "--strict", "--png",
                          str(tmp_path / "x.png")]) == 0
    out = capsys.readouterr().out
    compared = out.split("\n\n")[0].splitlines()
    assert compared[0].split() == ["compared", "tiny/version_0", "written0/vanishing"]
    assert compared[-1].split() == ["warnings", "0", "2"] and compared[-2].split() == ["errors", "0", "0"]
    assert table_rows(out.split("== ", 1)[1])["lstm_0"][-1] == "8" and (tmp_path / "x.png").stat().st_size > 1000


def test_the_figure_marks_the_findings_and_keeps_the_models_order(written):
    figure = diagnose.report_figure([diagnose.diagnose_run(written["vanishing"])])
    axis = figure.axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels[:14] == (["layers.0 (vanishing_depth: first)"] + [f"layers.{i}" for i in range(1, 7)]
                           + ["layers.7 (exploding: moved first)"] + [f"layers.{i}" for i in range(8, 11)]
                           + ["layers.11 (vanishing_depth: last)", "head", "total"])  # 0, 1, .., 11: not 0, 1, 10
    assert len({tuple(lines[label].get_color()) for label in labels[:13]}) == 13  # one colour per group
    widths = {label.split(" ")[0]: lines[label].get_linewidth() for label in labels[:13]}
    assert widths["layers.0"] == widths["layers.11"] > widths["layers.3"]
    spike = lines["exploding at step 25"]
    assert list(spike.get_xdata()) == [25, 25]
    assert axis.get_title().endswith("\nvanishing_depth, exploding")
    assert any(text.get_text().startswith("layers.0 / layers.11 = 8.2e-05 (threshold 0.01)") for text in axis.texts)


def test_the_legend_follows_the_models_order_when_the_run_says_it(tmp_path):
    order = ["layers.11", "layers.0", "head"] + [f"layers.{i}" for i in range(1, 11)]  # say, a reversed stack
    run = written_run(tmp_path / "ctx", context={"groups": order, "clip_value": None, "no_gradient": []})
    figure = diagnose.report_figure([diagnose.diagnose_run(run)])
    labels = [text.get_text().split(" ")[0] for text in figure.axes[0].get_legend().get_texts()]
    assert labels[:14] == order + ["total"]


def test_side_by_side_heat_maps_share_one_colour_scale(written):
    runs = [diagnose.diagnose_run(written[name]) for name in ("healthy", "vanishing")]
    figure = diagnose.report_figure(runs)
    images = [axis.images[0] for axis in figure.axes if axis.images]
    profile = [0.3 ** ((20 - t) / 4) for t in range(20)]  # as written: scale 1 and scale 100
    assert len(images) == 2
    for image in images:
        assert image.norm.vmin == pytest.approx(min(profile)) and image.norm.vmax == pytest.approx(100 * max(profile))


def test_a_nan_loss_is_a_nonfinite_finding_not_a_crash(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(30):
        writer.add_scalar("grad_2.0_norm/net.0.weight", math.inf if step == 25 else 1.0, step)  # Lightning's tags only
        writer.add_scalar("grad_2.0_norm/head.weight", 1.0, step)
        writer.add_scalar("train/loss", math.nan if step == 20 else 1 / (1 + step), step)
    writer.close()
    path = tmp_path / "f.json"
    assert diagnose.main([str(tmp_path), "--no-png", "--strict", "--json", str(path)]) == 1
    (finding,) = json.loads(path.read_text())["runs"][0]["findings"]
    assert finding["kind"] == "nonfinite" and finding["steps"] == [20, 25]
    assert finding["evidence"]["nonfinite_steps"] == 2
    assert finding["summary"].endswith("origin: the training loss non-finite in the event files")
    assert "non-finite steps 2" in capsys.readouterr().out


def test_folder_without_event_files_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lstm_grad.diagnose", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "no TensorBoard event files" in done.stderr
