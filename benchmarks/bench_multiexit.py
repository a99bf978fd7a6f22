"""Early exits on the shipped multi-exit model (splitdnn.multiexit): train it in code on procedurally generated
shapes (seeded, no download), then print accuracy, the share of frames leaving at each exit, ADDNN's p per block
and the expected latency per confidence threshold, from per-part times measured here. Asserts nothing.

    PYTHONPATH=src python benchmarks/bench_multiexit.py [--train 6000] [--test 2000] [--epochs 6] [--out m.keras]
"""

from __future__ import annotations

import argparse
import time

from splitdnn import multiexit as me_mod

THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=me_mod.DEFAULT_SEED)
    ap.add_argument("--out", help="save the trained model here (.keras)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    x, y = me_mod.shapes(args.train, seed=args.seed)
    xt, yt = me_mod.shapes(args.test, seed=args.seed + 1)
    model = me_mod.build(seed=args.seed)
    me_mod.train(model, x, y, epochs=args.epochs)
    print(
        f"trained on {args.train} generated images ({len(me_mod.CLASSES)} classes: {', '.join(me_mod.CLASSES)}), "
        f"{args.epochs} epochs, {time.perf_counter() - t0:.0f} s; {model.model.count_params():,} parameters"
    )
    if args.out:
        model.model.save(args.out)
        print(f"saved to {args.out}")
    probs = me_mod.probabilities(model, xt)
    seconds = me_mod.time_parts(model)
    costs = me_mod.exit_costs(seconds)
    no_exit = seconds["block0"] + seconds["block1"] + seconds["block2"]
    print(
        "compute per frame of each part (fastest of 20 calls on a batch of 32, divided by 32): "
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in seconds.items())
    )
    print(
        "accuracy of each exit alone on the test set: "
        + ", ".join(f"{name} {(p.argmax(1) == yt).mean():.3f}" for name, p in zip(me_mod.EXITS, probs))
    )
    print(
        f"answer at exit0 / exit1 / final costs {' / '.join(f'{c * 1e3:.3f}' for c in costs)} ms; "
        f"the model without exit heads {no_exit * 1e3:.3f} ms\n"
    )
    print(
        f"{'threshold':>9} {'accuracy':>9} {'exit0':>7} {'exit1':>7} {'final':>7} {'p(block1)':>10} "
        f"{'p(block2)':>10} {'latency ms':>11} {'vs no exits':>12}"
    )
    for row in me_mod.exit_table(probs, yt, THRESHOLDS, seconds):
        s = row["exit_share"]
        print(
            f"{row['threshold']:>9.2f} {row['accuracy']:>9.3f} {s[0]:>7.1%} {s[1]:>7.1%} {s[2]:>7.1%} "
            f"{row['p_block'][1]:>10.3f} {row['p_block'][2]:>10.3f} {row['latency_s'] * 1e3:>11.3f} "
            f"{row['latency_s'] / no_exit:>11.2f}x"
        )
    print("\nthreshold 1.01: no frame exits early (the final classifier alone, plus the two heads checked on the way)")


if __name__ == "__main__":
    main()
