"""`molal-ray predict` against a plain loop over the same classifier, and how it scales.

1. Speed: the example loop's classifier (MiniLM, frozen, + the head; ``runs/trec-loop/model``,
   or ``--model``) over each of ``--n`` texts (TREC questions repeated under new ids), with
   ``molal_ray.predict`` (Ray Data, one predictor actor) and as a plain Python loop
   (``load_classifier`` and ``predict_proba`` in batches, its imports and the model's load
   included, as a predictor actor's are), with the same batch size and torch threads. Each
   predict run is paired with a plain loop run just before it (this machine's speed drifts by
   10-15% over minutes), ``--repeat`` pairs of each, the median ratio printed. ``cold``: a fresh
   process, everything counted (Ray's start, its workers' first imports, the pool's preparation,
   the model's load, the compaction);
   ``warm``: the same process after a first predict of 1,000 other texts (Ray and its workers
   up, as in a notebook or a long-lived driver); ``cluster``: a fresh process joining a Ray head
   started before (``ray start --head`` on 127.0.0.1, 2 CPUs), as a job submitted to a running
   cluster is (its imports, its workers, the model's load counted; Ray's start not).
   ``--modes`` picks them. Ratio = plain seconds / predict seconds.
2. Scale: ``molal_ray.predict`` of a tiny classifier (``build_head_export``: the work per row is
   small, so what is measured is the machinery) at each of ``--sizes`` rows, each in a fresh
   process: wall time, and the peak memory of that driver process (``ru_maxrss``; Ray's workers
   are other processes).
3. Preparation and compaction (printed first; ``--skip-prepare``): ``PreparedPool.build`` of
   each ``--n`` pool twice in the driver (a pool under ``LOCAL_PREPARE_BYTES``) and twice through
   Ray Data's tasks, and the compaction of ``--n`` predictions written as a predict's two blocks
   do (16 parts) twice in the driver (under ``LOCAL_COMPACT_BYTES``) and twice as Ray tasks, each
   in one process with Ray up.

    .venv/bin/python benchmarks/predict_speed.py [--n 20000 100000] [--sizes 10000 100000] [--threads 2]
        [--blocks 1 4] [--repeat 3] [--modes cold warm cluster]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TREC = ROOT / "examples" / "trec"


def write_pool(path: Path, n: int) -> list[str]:
    base = pq.read_table(TREC / "pool.parquet").column("text").to_pylist()
    texts = [base[i % len(base)] for i in range(n)]
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(n)], "text": texts}), path)
    return texts


DRIVER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import molal_ray
import molal_ray.inference.job as job
job.PREDICT_GROUPS_PER_BLOCK = {groups}
ray_cfg = {{"num_cpus": {cpus}}} if {address!r} is None else {{"address": {address!r}}}
if {warm}:
    molal_ray.predict(model={model!r}, pool={{"path": {warm_pool!r}}},
                      output={{"path": {out!r} + "-warm-up", "mode": "overwrite"}},
                      predictor={{"batch_size": {batch}, "threads": {threads}}}, ray=ray_cfg)
t0 = time.monotonic()
s = molal_ray.predict(model={model!r}, pool={{"path": {pool!r}}}, output={{"path": {out!r}, "mode": "overwrite"}},
                      predictor={{"batch_size": {batch}, "threads": {threads}}}, ray=ray_cfg)
wall = time.monotonic() - t0
assert s.table_rows == {n}, s.table_rows
print(json.dumps({{"wall_s": wall, "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

PLAIN = """
import json, sys, time
t0 = time.monotonic()  # the imports counted, as the predictor actor's are
sys.path.insert(0, {root!r})
import pyarrow.parquet as pq, torch
torch.set_num_threads({threads})
from molal_ray.products import load_classifier
clf = load_classifier({model!r})
texts = pq.read_table({pool!r}).column("text").to_pylist()
p = clf.predict_proba(texts, batch_size={batch})
assert len(p) == {n}
print(json.dumps({{"wall_s": time.monotonic() - t0}}))
"""


PREPARE = """
import json, sys, time
sys.path.insert(0, {root!r})
from molal_ray.config import PoolConfig
from molal_ray.pipeline import pool_store
from molal_ray.runtime import init_local
init_local(num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
cfg = PoolConfig(path={pool!r})
out = {{}}
for way, limit in (("driver", pool_store.LOCAL_PREPARE_BYTES), ("ray_data", 0)):
    pool_store.LOCAL_PREPARE_BYTES = limit
    times = []
    for i in range(2):
        t0 = time.monotonic()
        pool_store.PreparedPool.build(cfg, {out!r} + f"-{{way}}-{{i}}")
        times.append(time.monotonic() - t0)
    out[way] = times
print(json.dumps(out))
"""


COMPACT = """
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {root!r})
import numpy as np
from molal_ray.ids import hash_ids
from molal_ray.inference.stage import prediction_rows
from molal_ray.pipeline import output
from molal_ray.pipeline.output import open_output, write_part
from molal_ray.pipeline.prepare import bucket_of
from molal_ray.runtime import init_local
from molal_ray.schema import PREDICTIONS
init_local(num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
labels, buckets = list("abcdef"), 8
ids = np.array([f"q{{i}}" for i in range({n})], dtype=object)
of = bucket_of(hash_ids(ids.tolist()), buckets)
rng = np.random.default_rng(0)
out = {{}}
for way, limit in (("driver", output.LOCAL_COMPACT_BYTES), ("ray_tasks", 0)):
    output.LOCAL_COMPACT_BYTES = limit
    times = []
    for i in range(2):
        o = open_output(tempfile.mkdtemp() + "/o", "overwrite", labels, ["classifier"], kind=PREDICTIONS)
        for block in (slice(0, 16384), slice(16384, None)):  # the parts of a predict's two blocks
            for k in range(buckets):
                sel = ids[block][of[block] == k].tolist()
                rows = prediction_rows(sel, rng.dirichlet(np.ones(6), len(sel)), labels)
                write_part(o.parts, rows, bucket=k, kind=PREDICTIONS)
        t0 = time.monotonic()
        output.compact(o, buckets, 0.25)
        times.append(time.monotonic() - t0)
    out[way] = times
print(json.dumps(out))
"""


def run(code: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_predict(folder: Path, model: str, pool: Path, n: int, groups: int, mode: str, opts: dict) -> dict:
    """One timed ``molal_ray.predict`` in a fresh process; ``cluster``: joining a Ray head started
    for it (before the clock starts, stopped after: the plain loop never shares the CPUs with it)."""
    folder.mkdir()
    code = dict(model=model, pool=str(pool), out=str(folder / "pred"), n=n, warm=mode == "warm", groups=groups)
    if mode != "cluster":
        return run(DRIVER.format(address=None, **code, **opts))
    from molal_ray.testing.ray_head import RayHead

    head = RayHead(folder, cwd=ROOT, num_cpus=opts["cpus"])
    try:
        head.start()
        return run(DRIVER.format(address=head.address, **code, **opts), env=head.env)
    finally:
        head.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs" / "trec-loop" / "model"))
    ap.add_argument("--n", type=int, nargs="+", default=[20000])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--repeat", type=int, default=1, help="pairs of (plain loop, predict) runs per setting, run in turn"
    )
    ap.add_argument("--modes", nargs="+", choices=["cold", "warm", "cluster"], default=["cold", "warm"])
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument(
        "--blocks", type=int, nargs="+", default=[4], help="row groups per predictor block (the job's default: 4)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="molal-predict-bench-") as tmp:
        t = Path(tmp)
        opts = {"root": str(ROOT), "threads": args.threads, "batch": args.batch, "cpus": 2}
        warm_pool = t / "warm.parquet"
        write_pool(warm_pool, 1000)
        opts["warm_pool"] = str(warm_pool)
        for n in [] if args.skip_prepare else args.n:  # the pool's preparation alone, Ray up
            pool = t / f"prepare-{n}.parquet"
            write_pool(pool, n)
            r = run(PREPARE.format(pool=str(pool), out=str(t / "prepared"), **opts))
            print(
                f"prepare, {n} texts: in the driver {' / '.join(f'{x:.2f}' for x in r['driver'])} s, "
                f"through Ray Data's tasks {' / '.join(f'{x:.2f}' for x in r['ray_data'])} s",
                flush=True,
            )
        for n in [] if args.skip_prepare else args.n:  # the output's compaction alone, Ray up
            r = run(COMPACT.format(n=n, **opts))
            print(
                f"compact, {n} predictions in 16 parts: in the driver {' / '.join(f'{x:.2f}' for x in r['driver'])} s, "
                f"as Ray tasks {' / '.join(f'{x:.2f}' for x in r['ray_tasks'])} s",
                flush=True,
            )
        for n in [] if args.skip_speed else args.n:
            pool = t / f"speed-{n}.parquet"
            write_pool(pool, n)
            ratios: dict[tuple[int, str], list[float]] = {}
            for rep in range(args.repeat):  # each predict beside a plain loop run just before it
                for groups, mode in [(g, m) for g in args.blocks for m in args.modes]:
                    plain = run(PLAIN.format(model=args.model, pool=str(pool), n=n, **opts))
                    ray_s = run_predict(t / f"run-{n}-{rep}-{groups}-{mode}", args.model, pool, n, groups, mode, opts)
                    ratio = plain["wall_s"] / ray_s["wall_s"]
                    ratios.setdefault((groups, mode), []).append(ratio)
                    print(
                        f"speed, {n} texts, {args.threads} threads, batch {args.batch}, blocks of {groups} row "
                        f"groups, {mode}, pair {rep + 1}: molal_ray.predict {ray_s['wall_s']:.1f} s "
                        f"({n / ray_s['wall_s']:.0f} texts/s), plain loop {plain['wall_s']:.1f} s "
                        f"({n / plain['wall_s']:.0f} texts/s): ratio {ratio:.2f}x",
                        flush=True,
                    )
            for (groups, mode), rs in ratios.items() if args.repeat > 1 else ():
                print(
                    f"speed, {n} texts, blocks of {groups} row groups, {mode}: median ratio "
                    f"{statistics.median(rs):.2f}x of {len(rs)} pairs (min {min(rs):.2f}x, max {max(rs):.2f}x)",
                    flush=True,
                )
        if args.skip_scale:
            return
        from molal_ray.testing.tiny_models import build_head_export

        tiny = str(build_head_export(t / "tiny", ["a", "b", "c", "d", "e", "f"], ["what is it", "who is it"]))
        rows = []
        for n in args.sizes:
            pool = t / f"pool-{n}.parquet"
            write_pool(pool, n)
            r = run(
                DRIVER.format(
                    model=tiny,
                    pool=str(pool),
                    out=str(t / f"pred-{n}"),
                    n=n,
                    warm=False,
                    groups=args.blocks[0],
                    address=None,
                    **opts,
                )
            )
            rows.append((n, r))
            print(f"scale, tiny classifier, {n} rows: {r['wall_s']:.1f} s, driver peak {r['driver_peak_mib']:.0f} MiB")
        if len(rows) > 1:
            (n0, a), (n1, b) = rows[0], rows[-1]
            print(
                f"scale {n1 // n0}x rows: time {b['wall_s'] / a['wall_s']:.2f}x, "
                f"driver memory {b['driver_peak_mib'] / a['driver_peak_mib']:.2f}x"
            )


if __name__ == "__main__":
    main()
