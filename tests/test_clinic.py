"""experiments.clinic: the page is computed from results/clinic.json, and one planted case end to end."""

import json

import pytest

COMMIT = "c" * 40


@pytest.fixture(scope="module")
def clinic():
    from experiments import clinic

    return clinic


def finding(kind: str, severity: str = "warning", groups=(), fix: str = "do something", **evidence) -> dict:
    return {"kind": kind, "severity": severity, "groups": list(groups), "steps": [0, 10], "summary": f"{kind} seen",
            "fix": fix, "evidence": {**evidence, "source": "a rule"}}


def round_(findings: list[dict], origin=None, **metrics) -> dict:
    return {"findings": findings, "offline": findings, "agree": True, "metrics": metrics, "origin": origin}


def case(name: str, expect: list[str], rounds: list[dict], fixes: list[str], named: bool, cured: bool,
         metric: tuple) -> dict:
    key, label, spec = metric
    return {"name": name, "planted": f"{name} planted", "expect": expect, "fixes": fixes, "rounds": rounds,
            "agree": True, "named": named, "cured": cured,
            "metric": {"key": key, "label": label, "format": spec, "before": rounds[0]["metrics"].get(key),
                       "after": rounds[-1]["metrics"].get(key)}}


@pytest.fixture()
def data() -> dict:
    deep = case("deep", ["vanishing_depth"],
                [round_([finding("vanishing_depth", groups=["layers.0", "layers.11"], ratio_first_last=4e-7)],
                        ratio_first_last=4.4e-7),
                 round_([finding("healthy", "info")], ratio_first_last=7.8)],
                ["residual connections + orthogonal init"], True, True,
                ("ratio_first_last", "grad ratio first/last layer", ".2g"))
    gates = case("gates", ["gate_saturation"],
                 [round_([finding("exploding", groups=["head"]), finding("gate_saturation", groups=["layers.0"])],
                         forget_closed=1.0),
                  round_([finding("exploding", groups=["head"]), finding("lr_too_low", groups=["head"])],
                         forget_closed=1.0)],
                 ["lr 0.001 → 3.33e-05 (/30)"], False, False, ("forget_closed", "forget gates closed", ".2f"))
    inf = case("inf", ["nonfinite"],
               [round_([finding("nonfinite", "error", groups=["head"])], origin="born in 'net.blowup'",
                       nonfinite_steps=1),
                round_([finding("healthy", "info")], nonfinite_steps=0)],
               ["the module named as the origin removed"], True, True, ("nonfinite_steps", "non-finite steps", "d"))
    control = case("control", [], [round_([finding("healthy", "info")], late_loss=0.71849)], [], True, True,
                   ("late_loss", "train loss (late median)", ".3f"))
    return {"command": "python -m experiments.clinic", "commit": COMMIT, "torch": "2.13.0+cpu", "lightning": "2.6.6",
            "wall_s": 61.4, "runs": 7, "cases": [deep, gates, inf, control],
            "thresholds": [{"name": "DEPTH_RATIO", "value": 0.01, "source": "depth.md"},
                           {"name": "SPIKE_MIN_HISTORY", "value": 5, "source": "six sigmas"}]}


def test_page_is_computed_from_the_json(clinic, data):
    page = clinic.render(data).splitlines()
    start = page.index("| case | planted cause | top finding (kind + groups) | fix applied | finding after the fix | "
                       "metric before → after | passed |")
    assert page[start + 2:start + 6] == [
        ("| deep | deep planted | vanishing_depth (layers.0, layers.11) [warning] | residual connections + orthogonal "
         "init | no warning (top: healthy [info]) | grad ratio first/last layer: 4.4e-07 → 7.8 | yes |"),
        ("| gates | gates planted | exploding (head) [warning] | lr 0.001 → 3.33e-05 (/30) | exploding, lr_too_low "
         "left | forget gates closed: 1.00 → 1.00 | **no** |"),
        ("| inf | inf planted | nonfinite (head) [error] | the module named as the origin removed | no warning (top: "
         "healthy [info]) | non-finite steps: 1 → 0 | yes |"),
        "| control | control planted | healthy [info] | — | — | train loss (late median): 0.718 | yes |",
    ]
    assert page[start + 6] == ""
    assert "**2 of 3 planted causes named first and cured; 1 of 1 controls without a warning.** Live and offline " \
           "(`signals_of(read_run(dir))`) findings agree on every run." in page
    assert "- gates: top finding exploding (head) [warning]; expected gate_saturation; after its fix (lr 0.001 → " \
           "3.33e-05 (/30)): exploding, lr_too_low left" in page
    assert "- inf: born in 'net.blowup'" in page
    thresholds = page.index("## Thresholds used")
    assert page[thresholds + 4:thresholds + 8] == ["| name | value | source |", "| --- | --- | --- |",
                                                   "| `DEPTH_RATIO` | 0.01 | depth.md |",
                                                   "| `SPIKE_MIN_HISTORY` | 5 | six sigmas |"]
    assert f"`python -m experiments.clinic` at commit `{COMMIT}`; torch 2.13.0+cpu, lightning 2.6.6; 7 runs, 61 s " \
           "wall time in all." in page


def test_report_only_rebuilds_the_page_from_the_json(clinic, data, tmp_path):
    (tmp_path / "clinic.json").write_text(json.dumps(data))
    assert clinic.main(["--report-only", "--json", str(tmp_path / "clinic.json"),
                        "--page", str(tmp_path / "clinic.md")]) == 0
    assert (tmp_path / "clinic.md").read_text() == clinic.render(data)
    with pytest.raises(SystemExit):
        clinic.main(["--report-only", "--json", str(tmp_path / "missing.json"), "--page", str(tmp_path / "x.md")])


def test_every_threshold_is_recorded_with_its_source(clinic):
    from lstm_grad.diagnostics import thresholds as T

    rows = {row["name"]: row for row in clinic.thresholds_used()}
    assert rows["SPIKE_MIN_HISTORY"]["source"] == T.SPIKE_SOURCE  # the family's source: SPIKE_MIN_HISTORY -> SPIKE
    assert rows["NOT_LEARNABLE_REL_MAE"]["source"] == T.NOT_LEARNABLE_SOURCE
    assert rows["UPDATE_LOW"]["value"] == T.UPDATE_LOW
    assert all(row["source"] for row in rows.values())


def test_a_fix_is_applied_only_while_the_doctor_still_names_it():
    from experiments.clinic_cases import BASE, apply_fix

    settings, what = apply_fix("lr_too_low", "raise the learning rate ~10-100x", {**BASE, "lr": 1e-7})
    assert settings["lr"] == pytest.approx(1e-5) and what == "lr 1e-07 → 1e-05 (x100)"
    assert apply_fix("healthy", "nothing to do", BASE) is None
    with pytest.raises(ValueError, match="no longer says 'residual'"):
        apply_fix("vanishing_depth", "use fewer layers", BASE)


@pytest.mark.slow
def test_planted_inf_is_the_top_finding_with_its_origin_and_its_fix_cures_it(clinic, tmp_path):
    out = tmp_path / "clinic.json"
    assert clinic.main(["--case", "inf_from_step_30", "--runs", str(tmp_path / "runs"), "--json", str(out),
                        "--page", str(tmp_path / "clinic.md")]) == 0
    (result,) = json.loads(out.read_text())["cases"]
    planted, fixed = result["rounds"]
    assert planted["findings"][0]["kind"] == "nonfinite"
    assert "'net.blowup' (InfFrom)" in planted["origin"]
    assert planted["agree"] and fixed["agree"]  # live findings == the event files' findings
    assert result["named"] and result["cured"] and fixed["metrics"]["nonfinite_steps"] == 0
    assert "| inf_from_step_30 |" in (tmp_path / "clinic.md").read_text()
