"""benchmarks.report: the benchmark page and the performance table come from the JSON files."""

import json

import pytest

MACHINE = {"torch": "2.13.0+cpu", "threads": 2, "cpus": 2, "loadavg": [0.5, 0.5, 0.5], "loadavg_end": [1.5, 1, 1],
           "commit": "b" * 40}


@pytest.fixture(scope="module")
def report():
    from benchmarks import report

    return report


def bench_json(ratio: float, spread: tuple[float, float, float], key: str = "lightning_vs_loop") -> dict:
    low, mid, high = spread
    return {"machine": MACHINE, "config": {"clock": "wall"}, "bench_seconds": 100.0, key: ratio,
            "spread": {key: {"min": low, "median": mid, "max": high, "runs": [low, mid, high]}},
            "items": {key: {"ratio": ratio, "epochs": 1, "days": 9112}}}


def test_page_and_readme_table_are_built_from_the_json(tmp_path, report):
    main = tmp_path / "benchmarks.json"
    main.write_text(json.dumps(bench_json(1.052, (1.042, 1.052, 1.059))))
    full = tmp_path / "full.json"
    full.write_text(json.dumps(bench_json(1.0396, (1.0345, 1.0396, 1.0447), "lightning_vs_loop_full")))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"epochs": 3, "rounds": 2, "fit_s": [7.5, 7.4], "machine": MACHINE,
                                   "shares": {"sanity check": 0.0102, "TimeGradientProbe": 0.0146}}))
    kernels = tmp_path / "kernels.json"
    kernels.write_text(json.dumps({"machine": MACHINE, "optimizer_step": {"plain 128-128-128": {
        "fused": {"min": 0.21, "median": 0.25, "max": 0.29}}}, "dropout_forward_backward": {
        "F.dropout (bernoulli_)": {"min": 2.7, "median": 2.8, "max": 3.0}}}))
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- bench:begin -->\ntyped 9.99\n<!-- bench:end -->\nbottom\n")
    out = tmp_path / "BENCHMARKS.md"
    report.main([str(main), "--profile", str(profile), "--kernels", str(kernels), "--extra", str(full), "--out", str(out),
                 "--page", str(readme)])
    page = out.read_text()
    assert "| lightning_vs_loop | 1 | 1.052 | 1.042 / 1.052 / 1.059 | <= 1.03 | MISS |" in page
    assert "- `lightning_vs_loop_full`: 1.04 (rounds 1.034 / 1.04 / 1.045); 1 epoch(s) per fit on 9112 days" in page
    assert "| lightning_vs_loop_full | 1 | 1.04 | 1.034 / 1.04 / 1.045 | <= 1.03 | MISS |" in page  # filled in
    assert f"`lightning_vs_loop_full` comes from `{full}` (commit bbbbbbb)." in page
    probe, sanity = page.index("| TimeGradientProbe | 1.46 % |"), page.index("| sanity check | 1.02 % |")
    assert probe < sanity  # largest cost first
    assert "| Adam step, plain 128-128-128 | fused | 0.210 / 0.250 / 0.290 |" in page
    assert "| dropout forward + backward, (32, 60, 128) | F.dropout (bernoulli_) | 2.700 / 2.800 / 3.000 |" in page
    text = readme.read_text()
    assert "typed 9.99" not in text and text.startswith("top\n") and text.endswith("<!-- bench:end -->\nbottom\n")
    assert "| lightning_vs_loop | 1 | 1.052 | 1.042 / 1.052 / 1.059 | <= 1.03 | MISS |" in text
    assert f"Commit: `{'b' * 40}`" in text and "| TimeGradientProbe | 1.46 % |" in text
    assert "| Adam step, plain 128-128-128 | fused | 0.210 / 0.250 / 0.290 |" in text
