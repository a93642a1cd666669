"""The paper's comparison on the TREC example: final test micro-F1 of the loop with labels from
`molal` (the aggregator) vs `gold` (human labels) vs `majority` vote vs the best single annotator,
for the random and max-entropy strategies, mean over seeds.

The best single annotator is chosen honestly: the one with the best vote accuracy on the initial
gold set of that seed (not with hindsight on the whole data).

    .venv/bin/python benchmarks/al_comparison.py                     # 3 seeds, 8 rounds of 50 (hours on 2 CPUs)
    .venv/bin/python benchmarks/al_comparison.py --seeds 1 --rounds 2 --strategies random --epochs 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def best_single(seed: int, initial_gold: int) -> str:
    """The annotator with the best vote accuracy on the seed's initial gold draw."""
    from molal_ray.aggregation import build_matrix
    from molal_ray.aggregation.api import load_gold
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.loop import runner

    cfg = LoopJobConfig.from_file(ROOT / "examples/trec/loop.yaml")
    sys_pool = runner.read_pool_frame(cfg)
    gold_df = load_gold(cfg.gold, cfg.task.labels)
    gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
    _, loop_ids = runner._split(cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"seed": seed})}),
                                sys_pool, gold)
    cands = [i for i in loop_ids if i in gold]
    init = np.random.default_rng([seed, 0]).choice(np.asarray(cands, dtype=object), initial_gold, replace=False)
    from benchmarks.aggregation_quality import trec_table

    table, _ = trec_table()
    m = build_matrix(table, len(cfg.task.labels))
    idx = {s: i for i, s in enumerate(m.sample_ids)}
    rows = np.array([idx[i] for i in init])
    y = np.array([gold[i] for i in init])
    accs = [(m.votes[rows, a].argmax(1) == y).mean() for a in range(len(m.annotators))]
    return m.annotators[int(np.argmax(accs))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--query-size", type=int, default=50)
    ap.add_argument("--strategies", nargs="*", default=["random", "max-entropy"])
    ap.add_argument("--modes", nargs="*", default=["molal", "gold", "majority", "single"])
    ap.add_argument("--epochs", type=int, default=None, help="override classifier.epochs")
    args = ap.parse_args()
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.loop.runner import run_loop

    base = LoopJobConfig.from_file(ROOT / "examples/trec/loop.yaml").model_dump(mode="json")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            single = best_single(seed, base["loop"]["initial_gold"]) if "single" in args.modes else None
            for strategy in args.strategies:
                for mode in args.modes:
                    data = {**base, "loop": {**base["loop"], "seed": seed, "strategy": strategy,
                                             "rounds": args.rounds, "query_size": args.query_size,
                                             "annotation": single if mode == "single" else mode},
                            "output": {"path": f"{tmp}/{seed}-{strategy}-{mode}", "mode": "overwrite"}}
                    if args.epochs:
                        data["classifier"] = {**data["classifier"], "epochs": args.epochs}
                    t0 = time.monotonic()
                    report = run_loop(LoopJobConfig.from_dict(data))
                    f1 = report["rounds"][-1]["test_micro_f1"]
                    results.setdefault((strategy, mode), []).append(f1)
                    print(f"seed {seed} {strategy:<12} {mode:<9}{'(' + single + ')' if mode == 'single' else '':<10} "
                          f"final micro-F1 {f1:.4f}  ({time.monotonic() - t0:.0f}s)", flush=True)
    print(f"\nfinal test micro-F1, mean of {args.seeds} seeds, {args.rounds} rounds of {args.query_size}:")
    print(f"{'strategy':<14}" + "".join(f"{m:>10}" for m in args.modes))
    for strategy in args.strategies:
        print(f"{strategy:<14}" + "".join(f"{np.mean(results[(strategy, m)]):>10.4f}" for m in args.modes))


if __name__ == "__main__":
    main()
