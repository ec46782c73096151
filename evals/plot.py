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


EXIT_KINDS = (("verified", "tab:green"), ("text only", "tab:olive"), ("reviewed", "tab:cyan"),
              ("fallback", "tab:orange"), ("nil", "tab:purple"), ("error", "tab:red"))


def exit_kind(status: str | None) -> str:
    """The kind of an exit status for the figure: verified (text or clue), fallback, text only, nil, reviewed, error."""
    status = status or "error"
    if status.endswith("verified") or status.startswith("clue_verified"):
        return "verified"
    return {"text_only": "text only"}.get(status, status if status in dict(EXIT_KINDS) else "error")


def plot_rounds(path: str | Path, per_round: list[dict], baselines: dict[str, float], labels: list[str],
                exits: dict[Any, Any], title: str, ceiling: float | None = None,
                ceiling_label: str = "ceiling: gold among the candidates") -> Path:
    """Draw the figure to ``path`` (matplotlib, Agg backend, no display needed).

    ``exits`` maps a stop round (``None``: failed) to its share of the mentions, or to
    ``{exit kind: share}`` (verified vs fallback ...; see :func:`exit_kind`), drawn stacked.
    ``ceiling`` is the share of golds the linker can answer (among the candidates, or nil).
    """
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
    if ceiling is not None and not math.isnan(ceiling):
        ax.axhline(100 * ceiling, color="tab:green", linewidth=1.5, alpha=0.7,
                   label=f"{ceiling_label} {100 * ceiling:.1f}")
    ax.legend(fontsize=8, loc="best")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_xlim(0.6, max(xs, default=1) + 0.4)
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.set_xlabel("after round")
    ax.set_title("Accuracy after each round", fontsize=10)
    ax.grid(axis="y", alpha=0.3)

    keys = sorted(exits, key=lambda k: (k is None, k if k is not None else 0))
    names = ["error" if k is None else ("text" if k == 1 else f"clue {k - 1}") for k in keys]
    split = {k: (v if isinstance(v, dict) else {"error" if k is None else "verified": v}) for k, v in exits.items()}
    bottom = [0.0] * len(keys)
    for kind, colour in EXIT_KINDS:
        heights = [100 * split[k].get(kind, 0.0) for k in keys]
        if any(heights) and any(isinstance(v, dict) for v in exits.values()):
            bx.bar(range(len(keys)), heights, bottom=bottom, color=colour, label=kind)
        elif any(heights):
            bx.bar(range(len(keys)), heights, bottom=bottom, color=colour)
        bottom = [b + h for b, h in zip(bottom, heights)]
    shares = bottom
    for i, s in enumerate(shares):
        bx.annotate(f"{s:.0f}%", (i, s), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=9)
    if any(isinstance(v, dict) for v in exits.values()):
        bx.legend(fontsize=8, loc="upper right")
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


def plot_reliability(path: str | Path, rel: dict[str, Any], title: str) -> Path:
    """Reliability diagram of the fused confidence: accuracy per confidence bin against the diagonal, with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    bins = rel.get("bins") or []
    if bins:
        width = bins[0]["hi"] - bins[0]["lo"]
        ax.bar([b["lo"] for b in bins], [b["acc"] for b in bins], width=width, align="edge", color="tab:blue",
               alpha=0.7, edgecolor="white", label="Top-1 in the bin")
        ax.plot([b["conf"] for b in bins], [b["acc"] for b in bins], "o", color="tab:red", markersize=4,
                label="mean confidence of the bin")
        for b in bins:
            ax.annotate(str(b["n"]), (b["lo"] + width / 2, b["acc"]), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7)
    ece = rel.get("ece")
    ece_text = "n/a" if ece is None or math.isnan(ece) else f"{100 * ece:.1f} points"
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("fused confidence of the final answer")
    ax.set_ylabel("share right")
    ax.set_title(f"{title}\nECE {ece_text} over {rel.get('n', 0)} answers (numbers: answers per bin)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
