"""scripts/bench_data.py --shards, tiny: it runs and reports both rates and the stream's memory (never its speed)."""

from __future__ import annotations

import importlib.util
import math

from tests.conftest import REPO


def test_the_shard_benchmark_streams_every_sample_and_reports_rates_and_memory(capsys):
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "scripts" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.bench_shards(samples=120, shard_size=40, size=16, shuffle_buffer=16)
    assert set(figures) == {"plain", "stream", "rss_start", "rss_middle", "rss_end"}
    assert all(math.isfinite(v) and v > 0 for v in figures.values())
    printed = capsys.readouterr().out
    assert "wrote 120 samples in 3 shards" in printed and "of the plain loop" in printed
