"""The compression report: the original and the compressed model measured side by side in one run, as
`report.json` (schema in docs/export.md, `SCHEMA_VERSION`) and `report.md` (the same numbers as a table)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from cmvl.atomic_file import atomic_write, write_json_atomic

SCHEMA_VERSION = 1


def build_report(
    *,
    method: str,
    settings: dict[str, Any],
    library: str,
    checkpoint: dict[str, Any],
    split: str,
    metric: str,
    original: dict[str, Any],
    compressed: dict[str, Any],
    compressed_file: str,
) -> dict[str, Any]:
    """The report's JSON: both measurements and what changed (`absolute_drop` = original − compressed metric,
    in the metric's units; ratios compressed / original)."""
    before, after = original["metrics"][metric], compressed["metrics"][metric]
    latency_ratio = {
        b: compressed["latency"][b]["median_ms"] / original["latency"][b]["median_ms"] for b in original["latency"]
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "settings": settings,
        "library": library,
        "checkpoint": checkpoint,
        "compressed_file": compressed_file,
        "split": split,
        "metric": metric,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "original": original,
        "compressed": compressed,
        "change": {
            "absolute_drop": before - after,
            "size_ratio": compressed["size_mb"] / original["size_mb"],
            "latency_ratio": latency_ratio,
        },
    }


def markdown(report: dict[str, Any]) -> str:
    metric, original, compressed = report["metric"], report["original"], report["compressed"]
    rows = [(f"{report['split']} {metric}", lambda m: f"{m['metrics'][metric]:.4f}")]
    rows.append(("file size (MB)", lambda m: f"{m['size_mb']:.3f}"))
    if "parameters" in original:
        rows.append(("parameters", lambda m: f"{m.get('parameters', 0):,}"))
    for b in original["latency"]:
        rows.append((f"latency batch {b} (median ms)", lambda m, b=b: f"{m['latency'][b]['median_ms']:.2f}"))
    table = "\n".join(f"| {name} | {show(original)} | {show(compressed)} |" for name, show in rows)
    env, change = report["environment"], report["change"]
    return f"""# Compression report: {report["method"]}

Library: {report["library"]}. Settings: `{report["settings"]}`.
Checkpoint sha256 `{report["checkpoint"]["sha256"][:16]}…`.

| | original | compressed |
|---|---|---|
{table}

Absolute {metric} drop: **{change["absolute_drop"]:+.4f}** (original − compressed).
Size ratio {change["size_ratio"]:.3f}.
Latency ratios (compressed / original): {", ".join(f"batch {b}: {r:.2f}" for b, r in change["latency_ratio"].items())}.
Measured one after the other in one process: torch {env["torch"]}, {env["threads"]} thread(s), {env["device"]}
({env["machine"]}); latencies on a shared machine are only comparable within this report.
"""


def write_report(report: dict[str, Any], out: Path) -> None:
    write_json_atomic(out / "report.json", report)
    with atomic_write(out / "report.md") as f:
        f.write(markdown(report))
