"""The chart of docs/BENCHMARKS.md: CPU-seconds per million outputs and letters per second of
each contender, per broker, from docs/benchmarks.json (written by pigeon-bench).

    python bench/chart.py docs/benchmarks.json docs/benchmarks.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def colour(run):
    if run.startswith("limit"):
        return "#9aa5b1"
    if run.startswith("peer"):
        return "#d97706"
    return "#2563eb"


def main(source, target):
    with open(source) as f:
        report = json.load(f)
    brokers = [b for b in ("tansu", "kafka", "mock") if any(r["broker"] == b for r in report["runs"])]
    fig, axes = plt.subplots(len(brokers), 2, figsize=(12, 3.2 + 2.2 * len(brokers)), squeeze=False)
    for row, broker in enumerate(brokers):
        runs = [r for r in report["runs"] if r["broker"] == broker]
        labels = [r["label"] for r in runs]
        colours = [colour(r["run"]) for r in runs]
        for col, (field, title) in enumerate(
            [("cpu_s_per_million_outputs", "CPU-seconds per million outputs (lower is better)"),
             ("letters_per_sec", "source letters per second (higher is better)")]
        ):
            ax = axes[row][col]
            values = [r[field] for r in runs]
            bars = ax.barh(labels, values, color=colours)
            ax.invert_yaxis()
            ax.set_title("%s: %s" % (broker, title), fontsize=10)
            ax.bar_label(bars, fmt="%.1f" if col == 0 else "%.0f", fontsize=8, padding=2)
            ax.margins(x=0.18)
            ax.tick_params(labelsize=8)
    title = "Pigeon against the limit and the peer (%s)" % report["machine"]
    for kept in report.get("kept", []):
        # Figures kept from an earlier run were measured elsewhere: the title says so.
        title += "\nkept: " + kept.replace("`", "")
    fig.suptitle(title, fontsize=11 if not report.get("kept") else 9)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
