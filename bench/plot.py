"""Plot of the bench results: latency (p50, p99) and throughput vs concurrent callers.

Usage: .venv/bin/python3 bench/plot.py bench/out/results.json bench/out/latency_vs_concurrency.png

Reads the JSON written by bench/run.exs; one line per pool size for Snakepit (solid) and for the
baseline tonic client (dashed).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, encoding="utf-8") as f:
        results = json.load(f)

    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]

    pools = sorted(results["concurrency"], key=lambda k: int(k.split("_")[-1]))
    for i, pool in enumerate(pools):
        rows = results["concurrency"][pool]
        size = pool.split("_")[-1]
        color = colors[i % len(colors)]
        x = [r["concurrency"] for r in rows]
        for side, style, label in (
            ("snakepit", "-", f"snakepit, pool {size}"),
            ("baseline", "--", f"baseline tonic, {size} workers"),
        ):
            p50 = [r[side]["p50_us"] / 1000 for r in rows]
            p99 = [r[side]["p99_us"] / 1000 for r in rows]
            tput = [r[side]["throughput_per_s"] for r in rows]
            ax_lat.plot(x, p50, style, color=color, marker="o", label=f"{label} p50")
            ax_lat.plot(x, p99, style, color=color, marker="^", alpha=0.45, label=f"{label} p99")
            ax_tput.plot(x, tput, style, color=color, marker="o", label=label)

    seq = results.get("sequential") or {}
    subtitle = ""
    if seq:
        o = seq["overhead"]
        subtitle = (
            f"sequential ping overhead vs baseline: p50 {o['p50_us']['us']:+.1f} us "
            f"({o['p50_us']['ratio']:.3f}x), p99 {o['p99_us']['us']:+.1f} us "
            f"({o['p99_us']['ratio']:.3f}x)"
        )

    for ax in (ax_lat, ax_tput):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent callers")
        xs = sorted({r["concurrency"] for p in pools for r in results["concurrency"][p]})
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in xs])
        ax.grid(True, which="both", alpha=0.3)

    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency per call (ms, log)")
    ax_lat.set_title("ping latency: circles p50, triangles p99 (faded)\nsolid snakepit, dashed baseline", fontsize=10)
    ax_lat.legend(fontsize=7, ncol=2)
    ax_tput.set_ylabel("calls / s")
    ax_tput.set_title("ping throughput vs concurrency")
    ax_tput.set_ylim(bottom=0)
    ax_tput.legend(fontsize=8)

    meta = results.get("meta", {})
    fig.suptitle(f"Snakepit bench ({meta.get('machine', '')})\n{subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py results.json out.png")
    main(sys.argv[1], sys.argv[2])
