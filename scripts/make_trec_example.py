"""Convert the trec-5llm recording into the project's offline example (run once; output committed).

Source: TREC question classification (Li & Roth, 2002), 5,452 training questions, annotated by
five instruction-tuned LLMs (gemma-2-9b-it, Llama-3.1-8B-Instruct, Mistral-7B-Instruct-v0.3,
Qwen2.5-Coder-7B-Instruct, Yi-1.5-9B-Chat) with the prompt in examples/trec/README.md.

    python scripts/make_trec_example.py ../shared/data/trec-5llm/recording.jsonl.gz examples/trec
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from molal_ray.engines.recording import iter_trec_jsonl, trec_jsonl_to_recording


def main(src: str, dst: str) -> None:
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(iter_trec_jsonl(src))
    pool = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})
    gold = pa.table({"sample_id": [r["id"] for r in rows], "label": [r["gold"] for r in rows]})
    pq.write_table(pool, out / "pool.parquet", compression="zstd")
    pcsv.write_csv(gold, out / "gold.csv")
    pq.write_table(trec_jsonl_to_recording(src), out / "recording.parquet", compression="zstd", use_dictionary=True)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
