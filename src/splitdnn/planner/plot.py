"""Scission-style figure (its Figs. 3-4): per-block compute time on every tier and per-block output bytes, with the
chosen plan's tier ranges shaded and its split points marked."""

from __future__ import annotations


def plot_plan(problem, plan, path: str, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n, T = len(problem.blocks), len(problem.tiers)
    x = np.arange(n)
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(max(8.0, min(24.0, 0.35 * n + 4)), 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / T
    for k, t in enumerate(problem.tiers):
        y = np.array([b.time[t] * 1e3 for b in problem.blocks])
        ax1.bar(x - 0.4 + width * (k + 0.5), y, width, label=f"{t} compute", color=colors[k % len(colors)])
    times = [b.time[t] for b in problem.blocks for t in problem.tiers if b.time[t] > 0]
    if times and max(times) / min(times) > 100:
        ax1.set_yscale("log")
    ax1.set_ylabel("compute time per block (ms)")
    out = np.array([b.out_bytes for b in problem.blocks], dtype=float)
    ax2.bar(x, out / 1e3, 0.6, color="0.45", label="output size")
    if out.max() > 0 and out[out > 0].min() > 0 and out.max() / max(out[out > 0].min(), 1) > 100:
        ax2.set_yscale("log")
    ax2.set_ylabel("output size (kB)")
    # shade each tier's range and mark split points
    prev = 0
    last_used = None
    for k, (t, c) in enumerate(zip(problem.tiers, plan.ends)):
        if c > prev:
            for ax in (ax1, ax2):
                ax.axvspan(prev - 0.5, c - 0.5, color=colors[k % len(colors)], alpha=0.10, lw=0)
            ax1.text(
                (prev + c - 1) / 2,
                0.97,
                t,
                transform=ax1.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=11,
                fontweight="bold",
                color=colors[k % len(colors)],
            )
            if last_used is None and k > 0:  # tier 0 unused: the input is shipped to this tier
                last_used = f"input {problem.tiers[0]}"
            if last_used is not None:
                nb = problem.blocks[prev - 1].out_bytes if prev > 0 else problem.input_bytes
                for ax in (ax1, ax2):
                    ax.axvline(prev - 0.5, color="crimson", ls="--", lw=1.8)
                label = f"{last_used}→{t}" if last_used.startswith("input") else f"link {last_used}→{t}"
                ax2.annotate(
                    f"{label}\n{nb / 1e3:.1f} kB",
                    (prev - 0.5, 0.95),
                    xycoords=ax2.get_xaxis_transform(),
                    ha="left",
                    va="top",
                    fontsize=9,
                    color="crimson",
                    xytext=(4, 0),
                    textcoords="offset points",
                    bbox=dict(fc="white", alpha=0.85, lw=0),
                )
            last_used = t
            prev = c
    ax2.set_xticks(x)
    labels = [b.name if len(b.name) <= 14 else b.name[:13] + "…" for b in problem.blocks]
    ax2.set_xticklabels(labels, rotation=60 if n > 8 else 0, ha="right" if n > 8 else "center", fontsize=8)
    ax2.set_xlabel("block (in model order)")
    ax1.legend(loc="upper right", fontsize=9)
    ax1.set_title(
        title
        or (
            f"plan: latency {plan.latency * 1e3:.1f} ms, bottleneck {plan.bottleneck * 1e3:.1f} ms, "
            f"{plan.bytes / 1e3:.1f} kB per frame"
        )
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
