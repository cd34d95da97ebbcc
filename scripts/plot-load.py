#!/usr/bin/env python3
"""Latency percentiles per scenario from the load bench's CSVs -> a PNG.

    python3 scripts/plot-load.py target/load/results.csv target/load/nginx.csv docs/load-latency.png

Needs matplotlib (pip install matplotlib). Bars: p50, p90, p99, p99.9 on a log
axis, one group per (scenario, server).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    *inputs, out = sys.argv[1:]
    rows = []
    for path in inputs:
        with open(path) as f:
            rows.extend(csv.DictReader(f))
    labels = [f"{r['scenario']}\n{r['server']}" for r in rows]
    pcts = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
    for k, (col, name) in enumerate(pcts):
        xs = [i + (k - 1.5) * width for i in range(len(rows))]
        ax.bar(xs, [float(r[col]) for r in rows], width, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=0.6, linestyle="--")
    ax.legend(ncol=4, fontsize=8)
    ax.set_title("vaeproxy load bench: latency percentiles per scenario (loopback, 2 cores)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
