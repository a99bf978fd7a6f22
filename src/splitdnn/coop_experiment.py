"""`splitdnn experiment coopai`: MLS vs SLS with the CoopAI paper's Raspberry Pi 4 parameters (Yang et al., Sec. V).

The paper's models are layer tables here (pure `Geom`s, no weights: only shapes and FLOPs matter to the cost
model). Parameters from the paper: F = 13.6 GFLOPS per RP4, G = 100 Mbps by default and 40 … 400 Mbps for Fig. 9,
1 … 10 devices, input sizes of Table I. Assumed where the paper is silent (see ASSUMPTIONS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from splitdnn.coop import Chain, Geom
from splitdnn.mls import BITS_PER_VALUE, CostModel, Platform, mls, sls

RP4_FLOPS = 13.6e9
DEFAULT_BANDWIDTH_MBPS = 100.0
BANDWIDTHS_MBPS = (40.0, 100.0, 200.0, 300.0, 400.0)
MAX_DEVICES = 10

ASSUMPTIONS = [
    f"activations and the input image are {BITS_PER_VALUE}-bit floats (the paper does not state the data type)",
    "Fig. 9's bandwidth points: 40, 100, 200, 300 and 400 Mbps (the paper gives the range 40 to 400 Mbps)",
    (
        "layers are the models' convolution, pooling, flatten and dense layers (ReLU folded into its layer); only "
        "convolution and dense layers cost FLOPs (the paper: they dominate); the gateway's own work costs nothing"
    ),
    (
        "AlexNet is the single-tower network of Table I (224×224 input, conv1 11×11/4 with 2 rows of padding, "
        "2.27 GFLOPs, 62 M parameters)"
    ),
    (
        "YOLOv2 (608×608, darknet yolov2.cfg) is its 22-convolution main chain; the passthrough branch (route 16 → "
        "1×1 conv, 64 filters → reorg → concat) is one pseudo-layer before the 23rd convolution that turns 19×19×1024 "
        "into 19×19×1280, costs the branch's 0.095 GFLOPs, and needs no halo (each device keeps its layer-16 stripe)"
    ),
    "SLS picks the better of model and data parallelism for each dense layer, like MLS",
    "blocks are cut from output rows split evenly; a device never receives what it already holds",
]

# The paper's reported figures (Sec. V-A, V-B, Table II): RP4, 100 Mbps, up to 10 devices.
PAPER = {
    "AlexNet": {
        "gflops": 2.27,
        "mls_devices": 2,
        "sls_devices": 2,
        "mls_vs_sls_percent": 4.91,
        "mls_vs_one_percent": 18.43,
        "fig9_max_percent": 5.71,
        "table2_blocks": [1, 5, 4, 4, 4, 4, 4, 4, 4, 4],
    },
    "VGG16": {
        "gflops": 31.0,
        "mls_devices": 7,
        "sls_devices": 3,
        "mls_vs_sls_percent": 31.49,
        "mls_vs_one_percent": 60.46,
        "fig9_max_percent": 31.10,
        "table2_blocks": [1, 8, 7, 6, 5, 4, 4, 4, 4, 4],
    },
    "VGG19": {
        "gflops": 39.3,
        "mls_devices": 7,
        "sls_devices": 3,
        "mls_vs_sls_percent": 28.53,
        "mls_vs_one_percent": 58.94,
        "fig9_max_percent": 27.69,
        "table2_blocks": [1, 11, 9, 8, 5, 4, 5, 5, 4, 4],
    },
    "YOLOv2": {
        "gflops": 62.9,
        "mls_devices": 6,
        "sls_devices": 4,
        "mls_vs_sls_percent": 17.75,
        "mls_vs_one_percent": 55.91,
        "fig9_max_percent": 18.09,
        "table2_blocks": [1, 12, 10, 9, 8, 7, 7, 7, 5, 5],
    },
}


def alexnet() -> list[Geom]:
    c = Chain((224, 224, 3)).conv(96, 11, 4, (2, 2, 2, 2)).pool(3, 2).conv(256, 5).pool(3, 2)
    c.conv(384, 3).conv(384, 3).conv(256, 3).pool(3, 2).flatten()
    return c.dense(4096).dense(4096).dense(1000, softmax=True).layers


def vgg(convs_per_stage) -> list[Geom]:
    c = Chain((224, 224, 3))
    for count, filters in zip(convs_per_stage, (64, 128, 256, 512, 512)):
        for _ in range(count):
            c.conv(filters, 3)
        c.pool(2, 2)
    return c.flatten().dense(4096).dense(4096).dense(1000, softmax=True).layers


def yolov2() -> list[Geom]:
    c = Chain((608, 608, 3)).conv(32, 3).pool(2, 2).conv(64, 3).pool(2, 2)
    c.conv(128, 3).conv(64, 1).conv(128, 3).pool(2, 2)
    c.conv(256, 3).conv(128, 1).conv(256, 3).pool(2, 2)
    c.conv(512, 3).conv(256, 1).conv(512, 3).conv(256, 1).conv(512, 3)  # the 16th darknet layer: 38×38×512
    c.pool(2, 2).conv(1024, 3).conv(512, 1).conv(1024, 3).conv(512, 1).conv(1024, 3)
    c.conv(1024, 3).conv(1024, 3)
    h, w, _ = c.shape
    branch_flops = 2.0 * 38 * 38 * 512 * 64  # route 16 → 1×1 conv, 64 filters (then reorg 2: 19×19×256)
    c.add(Geom("passthrough", "conv", c.shape, (h, w, 1280), flops_per_row=branch_flops / h))
    return c.conv(1024, 3).conv(425, 1).layers


MODELS = {
    "AlexNet": alexnet,
    "VGG16": lambda: vgg((2, 2, 3, 3, 3)),
    "VGG19": lambda: vgg((2, 2, 4, 4, 4)),
    "YOLOv2": yolov2,
}


def run(models=tuple(MODELS), bandwidths=BANDWIDTHS_MBPS, max_devices=MAX_DEVICES, flops=RP4_FLOPS, say=None):
    """Every (model, devices, bandwidth): MLS and SLS on exactly that many devices (T_L^k of eq. 2)."""
    runs = []
    for name in models:
        geoms = MODELS[name]()
        for k in range(1, max_devices + 1):
            costs = CostModel(geoms, k)  # one cost table per k serves every bandwidth
            for mbps in bandwidths:
                platform = Platform(flops, mbps * 1e6)
                m, s = mls(geoms, k, platform, costs), sls(geoms, k, platform, costs)
                runs.append(
                    {
                        "model": name,
                        "devices": k,
                        "bandwidth": mbps,
                        "mls_seconds": m.seconds,
                        "sls_seconds": s.seconds,
                        "mls_blocks": m.block_list,
                        "sls_blocks": s.block_list,
                        "mls_modes": [b[3] for b in m.blocks],
                    }
                )
        if say:
            say(f"coopai: {name} done ({len(geoms)} layers, {sum(g.flops for g in geoms) / 1e9:.2f} GFLOPs)")
    return runs


def _pct(better: float, worse: float) -> float:
    return 100.0 * (worse - better) / worse


def summarize(runs, default_mbps=DEFAULT_BANDWIDTH_MBPS):
    """Per model: the paper's figures and ours side by side (best device counts, savings, block counts)."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == name]
        at = [r for r in mine if r["bandwidth"] == default_mbps]
        best_m = min(at, key=lambda r: r["mls_seconds"])
        best_s = min(at, key=lambda r: r["sls_seconds"])
        one = next(r for r in at if r["devices"] == 1)
        fig9 = {}
        for mbps in sorted({r["bandwidth"] for r in mine}):
            rs = [r for r in mine if r["bandwidth"] == mbps]
            m, s = min(r["mls_seconds"] for r in rs), min(r["sls_seconds"] for r in rs)
            fig9[str(mbps)] = {"mls_seconds": m, "sls_seconds": s, "mls_vs_sls_percent": _pct(m, s)}
        out[name] = {
            "gflops": sum(g.flops for g in MODELS[name]()) / 1e9 if name in MODELS else None,
            "mls_devices": best_m["devices"],
            "sls_devices": best_s["devices"],
            "mls_seconds": best_m["mls_seconds"],
            "sls_seconds": best_s["sls_seconds"],
            "one_device_seconds": one["mls_seconds"],
            "mls_vs_sls_percent": _pct(best_m["mls_seconds"], best_s["sls_seconds"]),
            "mls_vs_one_percent": _pct(best_m["mls_seconds"], one["mls_seconds"]),
            "fig9": fig9,
            "fig9_max_percent": max(v["mls_vs_sls_percent"] for v in fig9.values()),
            "blocks_by_devices": [len(r["mls_blocks"]) for r in sorted(at, key=lambda r: r["devices"])],
            "paper": PAPER.get(name),
        }
    return out


def markdown(result) -> str:
    s = result["summary"]
    lines = [
        (
            f"# CoopAI: MLS vs SLS, RP4 (F = {result['parameters']['flops'] / 1e9:g} GFLOPS), "
            f"{DEFAULT_BANDWIDTH_MBPS:g} Mbps, 1…{result['parameters']['max_devices']} devices — ours | paper"
        ),
        "",
        (
            "| model | GFLOPs | MLS best k | SLS best k | MLS s | SLS s | 1 device s | MLS vs SLS % | MLS vs 1 dev % "
            "| Fig. 9 max MLS vs SLS % |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in s.items():
        p = v["paper"] or {}
        lines.append(
            f"| {name} | {v['gflops']:.2f} \\| {p.get('gflops', '–')}"
            f" | {v['mls_devices']} \\| {p.get('mls_devices', '–')}"
            f" | {v['sls_devices']} \\| {p.get('sls_devices', '–')} | {v['mls_seconds']:.3f} | {v['sls_seconds']:.3f}"
            f" | {v['one_device_seconds']:.3f} | {v['mls_vs_sls_percent']:.2f} \\| {p.get('mls_vs_sls_percent', '–')}"
            f" | {v['mls_vs_one_percent']:.2f} \\| {p.get('mls_vs_one_percent', '–')}"
            f" | {v['fig9_max_percent']:.2f} \\| {p.get('fig9_max_percent', '–')} |"
        )
    lines += [
        "",
        "Blocks MLS chooses on k devices (Table II) — ours / paper:",
        "",
        "| model | " + " | ".join(str(k) for k in range(1, result["parameters"]["max_devices"] + 1)) + " |",
        "|---|" + "---|" * result["parameters"]["max_devices"],
    ]
    for name, v in s.items():
        paper = (v["paper"] or {}).get("table2_blocks", [])
        cells = [f"{b} / {paper[i]}" if i < len(paper) else str(b) for i, b in enumerate(v["blocks_by_devices"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Best MLS vs best SLS (≤ 10 devices) by gateway bandwidth (Fig. 9):",
        "",
        "| model | " + " | ".join(f"{b} Mbps" for b in next(iter(s.values()))["fig9"]) + " |",
        "|---|" + "---|" * len(next(iter(s.values()))["fig9"]),
    ]
    for name, v in s.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{x['mls_seconds']:.3f} s vs {x['sls_seconds']:.3f} s ({x['mls_vs_sls_percent']:.1f} %)"
                for x in v["fig9"].values()
            )
            + " |"
        )
    lines += ["", "Assumed where the paper is silent:", ""] + [f"- {a}" for a in result["assumptions"]]
    return "\n".join(lines) + "\n"


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, names = result["runs"], list(result["summary"])
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        at = sorted(
            (r for r in runs if r["model"] == name and r["bandwidth"] == DEFAULT_BANDWIDTH_MBPS),
            key=lambda r: r["devices"],
        )
        ax = axes[0][col]
        ax.plot([r["devices"] for r in at], [r["mls_seconds"] for r in at], "o-", label="MLS")
        ax.plot([r["devices"] for r in at], [r["sls_seconds"] for r in at], "s--", label="SLS")
        p = PAPER.get(name)
        note = f"paper: MLS k={p['mls_devices']}, −{p['mls_vs_sls_percent']}% vs SLS" if p else ""
        ax.set_title(f"{name} ({DEFAULT_BANDWIDTH_MBPS:g} Mbps)\n{note}", fontsize=9)
        ax.set_xlabel("devices")
        ax.set_ylabel("completion time (s)")
        ax.legend()
        fig9 = result["summary"][name]["fig9"]
        ax = axes[1][col]
        bws = [float(b) for b in fig9]
        ax.plot(bws, [v["mls_seconds"] for v in fig9.values()], "o-", label="MLS")
        ax.plot(bws, [v["sls_seconds"] for v in fig9.values()], "s--", label="SLS")
        note = f"paper: up to −{p['fig9_max_percent']}% vs SLS" if p else ""
        ax.set_title(f"{name}, best of ≤{result['parameters']['max_devices']} devices\n{note}", fontsize=9)
        ax.set_xlabel("gateway bandwidth (Mbps)")
        ax.set_ylabel("completion time (s)")
        ax.legend()
    fig.suptitle("CoopAI on RP4: Fig. 8 (top) and Fig. 9 (bottom), from the cost model")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_experiment(
    out: Path, say=None, models=tuple(MODELS), bandwidths=BANDWIDTHS_MBPS, max_devices=MAX_DEVICES
) -> dict:
    """Writes out/results.json, out/results.md and out/coopai.png; returns the result."""
    started = time.monotonic()
    runs = run(models, bandwidths, max_devices, say=say)
    result = {
        "parameters": {
            "flops": RP4_FLOPS,
            "default_bandwidth_mbps": DEFAULT_BANDWIDTH_MBPS,
            "bandwidths_mbps": list(bandwidths),
            "max_devices": max_devices,
            "bits_per_value": BITS_PER_VALUE,
        },
        "assumptions": ASSUMPTIONS,
        "runs": runs,
        "summary": summarize(runs),
    }
    result["wall_seconds"] = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "coopai.png")
    return result
