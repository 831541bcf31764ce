"""The headline keys of a benchmark run, their targets, and the result JSON as text (the table and
one line per measured comparison), shared by ``benchmarks.bench`` and ``benchmarks.report``."""

from __future__ import annotations

from typing import Any

HEADLINE = {  # JSON key -> (item, target, "max" if the value must stay below the target else "min")
    "lightning_vs_loop": (1, 1.03, "max"),
    "lightning_vs_loop_full": (1, 1.03, "max"),
    "monitor_overhead": (2, 0.01, "max"),
    "diagnostics_overhead": (3, 0.03, "max"),
    "gemm_fraction": (4, 0.9, "min"),
    "data_setup_s": (5, 0.5, "max"),
    # item 6: cost may grow linearly or slower; an exponent above 1 would mean each window step costs more
    # as the series or the window grows (sub-linear in the window: the input GEMM spans the whole window)
    "scaling_exponent_days": (6, 1.15, "max"),
    "scaling_exponent_window": (6, 1.15, "max"),
    "darts_ratio": (9, 0.97, "max"),  # issue 24: clearly ahead of darts, diagnostics on
}


def verdict(key: str, value: float | None) -> str:
    """Say whether a headline value meets its target: ``ok``, ``MISS`` or ``n/a``."""
    if value is None or key not in HEADLINE:
        return "n/a"
    _, target, kind = HEADLINE[key]
    return "ok" if (value <= target if kind == "max" else value >= target) else "MISS"


def table(result: dict[str, Any]) -> str:
    """Format the headline keys with min / median / max (from their items) and targets."""
    lines = ["| key | item | value | min / median / max | target | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, (item, target, kind) in HEADLINE.items():
        value = result.get(key)
        spread = result.get("spread", {}).get(key)
        span = " / ".join(f"{spread[k]:.4g}" for k in ("min", "median", "max")) if spread else ""
        sign = {"max": "<=", "min": ">="}[kind]
        shown = "not measured" if value is None else f"{value:.4g}"
        lines.append(f"| {key} | {item} | {shown} | {span} | {sign} {target:g} | {verdict(key, value)} |")
    return "\n".join(lines)


def details(result: dict[str, Any]) -> str:
    """One line per measured comparison: both sides' median seconds (min..max) and the ratio."""
    lines = []
    for name, item in result.get("items", {}).items():
        sides = [k for k, v in item.items() if isinstance(v, dict) and "median" in v and "runs" in v
                 and k not in ("pair_ratios", "pair_fractions")]
        parts = [f"{k} {item[k]['median']:.4g} ({item[k]['min']:.4g}..{item[k]['max']:.4g})" for k in sides]
        if "ratio" in item:
            parts.append(f"ratio {item['ratio']:.4f}")
        parts += [f"{k} {item[k]:.4g}" for k in ("bare_loop_ratio", "ratio_of_medians", "exponent_days",
                                                 "exponent_window", "copies_of_series", "max_rel_grad_norm_diff")
                  if isinstance(item.get(k), float)]
        parts += [f"{k} {item[k]}" for k in ("bytes_held", "bytes_if_windows_copied", "callbacks", "error")
                  if k in item]
        if "added_s" in item:  # item 1: wall time minus the network's forward and backward, per fit
            parts.append("seconds per fit beyond the network: " + ", ".join(
                f"{k} {v['median']:.3f} ({v['min']:.3f}..{v['max']:.3f})" for k, v in item["added_s"].items()))
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)
