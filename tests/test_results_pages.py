"""experiments.results_pages: the results tables are computed from the CSVs, not typed."""

import csv
from pathlib import Path

import pytest

COMMIT = "a" * 40


@pytest.fixture(scope="module")
def pages():
    from experiments import results_pages

    return results_pages


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_row(config: str, seed: int, mase: float, mae: float, dm_p: float, dm_stat: float, best: int, **extra) -> dict:
    return {"config": config, "seed": seed, "horizon": 1, "target_mode": "log_return", "mae": mae, "mase": mase,
            "dir_acc": 0.5, "dm_sq_p": dm_p, "dm_sq_stat": dm_stat, "best_epoch": best, "epochs": best + 10,
            "wall_s": 30.0, "commit": COMMIT, "torch": "2.13.0+cpu", "lightning": "2.6.6", **extra}


def test_readme_section_is_computed_from_the_csvs(tmp_path, pages):
    results = tmp_path / "results"
    write(results / "runs.csv", [
        run_row("persistence", 0, 1.0, 6.0, float("nan"), float("nan"), 0),
        run_row("drift", 0, 1.01, 6.06, 0.5, 1.0, 0),
        run_row("linear_ar", 0, 1.02, 6.12, 0.01, 2.6, 0),  # significantly worse
        run_row("default", 0, 1.00, 6.00, 0.9, 0.1, 3),
        run_row("default", 1, 1.02, 6.12, 0.02, -2.3, 7),  # significantly better
        run_row("residual", 0, 4.0, 24.0, 1e-9, 8.0, 12),
    ])
    write(results / "backtest.csv", [{"fold": "all", "test_start": "2008-03-18", "test_end": "2012-12-31",
                                      "mae": 6.43036, "naive_mae": 6.43202, "mase": 0.999742, "dm_p": 0.763789}])
    write(results / "depth.csv", [
        {"variant": "residual/default", "depth": 16, "window": 60, "ratio_start": 0.5, "ratio_end": 0.25,
         "reach_start": 60, "reach_end": 59, "test_mase": 3.5, "wall_s": 10, "commit": COMMIT},
        {"variant": "residual/orthogonal", "depth": 16, "window": 60, "ratio_start": 0.75, "ratio_end": 0.125,
         "reach_start": 60, "reach_end": 60, "test_mase": 2.25, "wall_s": 10, "commit": COMMIT},
    ])
    (results / "logs").mkdir()
    (results / "logs" / "full_protocol.log").write_text(
        "2026-12-01T03:08:54Z start ablation: ...\n2026-12-01T04:08:54Z done  ablation: 3600 s\n"
        "2026-12-01T04:08:55Z done  depth: 600 s\n")
    section = pages.readme_section(results)
    assert f"`{COMMIT}`" in section and "torch 2.13.0+cpu, lightning 2.6.6" in section
    assert "| 1 | default | 2 | 6.06 ± 0.08 | 1.010 ± 0.014 | 0 worse, 1 better of 2 | 50.0 ± 0.0 |" in section
    assert "| 1 | linear_ar | 1 | 6.12 | 1.020 | 1 worse, 0 better of 1 | 50.0 |" in section
    assert "| 1 | all | 2008-03-18..2012-12-31 | 6.430 | 6.432 | 0.9997 | 0.764 |" in section
    assert "| default | 3, 7 |" in section and "| residual | 12 |" in section  # best epoch per seed
    assert "| orthogonal | 0.75 | 0.125 | 60 | 60 | 2.25 |" in section
    assert "ablation 60 min, depth 10 min; 70 min in all" in section

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{pages.BEGIN}\nold typed numbers\n{pages.END}\nrest\n")
    pages.rewrite_readme(readme, section)
    text = readme.read_text()
    assert "old typed numbers" not in text and text.startswith("intro\n") and text.endswith(f"{pages.END}\nrest\n")
    assert section in text


def test_readme_summary_is_the_default_forecasters_headline_rows(tmp_path, pages):
    results = tmp_path / "results"
    write(results / "runs.csv", [
        run_row("persistence", 0, 1.0, 6.0, float("nan"), float("nan"), 0),
        run_row("drift", 0, 1.01, 6.06, 0.5, 1.0, 0),
        run_row("default", 0, 1.00, 6.00, 0.9, 0.1, 3),
        run_row("default", 1, 1.02, 6.12, 0.02, -2.3, 7),
    ])
    fold = {"test_start": "2008-03-18", "test_end": "2012-12-31", "mae": 6.43036, "naive_mae": 6.43202,
            "mase": 0.999742, "dm_p": 0.763789}
    write(results / "backtest.csv", [{"fold": "1", **fold}, {"fold": "all", **fold}])
    section = pages.summary_section(results)
    assert len([line for line in section.splitlines() if line.startswith("|")]) <= 8
    assert "| 1 | default | 2 | 6.06 ± 0.08 | 1.010 ± 0.014 | 0 worse, 1 better of 2 | 50.0 ± 0.0 |" in section
    assert "| 1 | persistence | 1 | 6.00 | 1.000 | — | n/a |" in section
    assert "drift" not in section and "| 1 | 1 |" not in section  # the rest stays on docs/results.md
    assert "| 1 | all | 2008-03-18..2012-12-31 | 6.430 | 6.432 | 0.9997 | 0.764 |" in section
    assert f"2 seeds, test span 2012, commit `{COMMIT[:7]}`" in section

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{pages.SUMMARY_BEGIN}\nold\n{pages.SUMMARY_END}\nrest\n")
    pages.rewrite_readme(readme, section, pages.SUMMARY_BEGIN, pages.SUMMARY_END)
    assert readme.read_text() == f"intro\n{pages.SUMMARY_BEGIN}\n{section}\n{pages.SUMMARY_END}\nrest\n"
