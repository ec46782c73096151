"""``rounds.png``: accuracy after each round (as in the I2CR paper's figure) and where mentions exit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def round_labels(n_rounds: int, clue_use: dict[int, Any]) -> list[str]:
    """``text``, then ``clue k`` with the clue type used most in that round (empty clues are skipped)."""
    labels = ["text"]
    for k in range(2, n_rounds + 1):
        use = clue_use.get(k)
        if use:
            clue, count = use.most_common(1)[0]
            share = count / sum(use.values())
            labels.append(f"+clue {k - 1}\n({clue}{'' if share == 1 else f' {share:.0%}'})")
        else:
            labels.append(f"+clue {k - 1}")
    return labels


def plot_rounds(path: str | Path, per_round: list[dict], baselines: dict[str, float], labels: list[str],
                exits: dict[int, float], title: str) -> Path:
    """Draw the figure to ``path`` (matplotlib, Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    xs = list(range(1, len(per_round) + 1))
    acc = [100 * r["acc"] for r in per_round]
    err = [[100 * (r["acc"] - r["lo"]) for r in per_round], [100 * (r["hi"] - r["acc"]) for r in per_round]]
    ax.errorbar(xs, acc, yerr=err, marker="o", capsize=4, color="tab:blue", label="I2CR (cumulative)")
    for x, y in zip(xs, acc):
        if not math.isnan(y):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9)
    styles = iter(["--", ":", "-."])
    for name, value in baselines.items():
        if value is not None and not math.isnan(value):
            ax.axhline(100 * value, linestyle=next(styles, "--"), color="gray", linewidth=1,
                       label=f"{name} {100 * value:.1f}")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_xlim(0.6, max(xs, default=1) + 0.4)
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.set_xlabel("after round")
    ax.set_title("Accuracy after each round", fontsize=10)
    ax.grid(axis="y", alpha=0.3)

    keys = sorted(exits, key=lambda k: (k is None, k if k is not None else 0))
    names = ["error" if k is None else ("text" if k == 1 else f"clue {k - 1}") for k in keys]
    shares = [100 * exits[k] for k in keys]
    bx.bar(range(len(keys)), shares, color=["tab:red" if k is None else "tab:green" for k in keys])
    for i, s in enumerate(shares):
        bx.annotate(f"{s:.0f}%", (i, s), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=9)
    bx.set_xticks(range(len(keys)), names, fontsize=8)
    bx.set_ylabel("mentions (%)")
    bx.set_title("Round at which the graph stopped", fontsize=10)
    bx.set_ylim(0, max(shares, default=0) * 1.15 + 1)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
