"""Wrong inputs a new user gives, tried against every command: each ends, within 30 seconds and
before any work, with exit code 2 and one ``error:`` line (click's own ``Error:`` for a bad
option) that names the cause; never a traceback, a hang or a wrong result with exit 0.

The list is written out, one case a line, so that a failure names what the user did. Cases run
in-process (the command's own code, no subprocess); none of them may reach a Ray start, which a
case would show by running past its 30 seconds. Failures found after Ray starts (a model that
cannot load on a worker, a storage that stops answering mid-job) are tested where the job runs
(``tests/integration``)."""

from __future__ import annotations

import json
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from molal_ray.cli import main
from tests.conftest import TREC, TREC_LABELS

LIMIT_S = 30
MAX_LINES = 8  # an error a user reads at a glance: no schema dumps, no stack


class World:
    """A folder of the files the cases start from: copies of the TREC example (a label config, a
    loop config, a pool, gold labels, an exported classifier) that each case spoils one way."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copy(TREC / "pool.parquet", root / "pool.parquet")
        shutil.copy(TREC / "gold-50.csv", root / "gold.csv")
        self.recording = str(TREC / "recording.parquet")
        self.label = yaml.safe_load((TREC / "label.yaml").read_text())
        self.label["annotators"] = [
            {"name": n, "engine": {"type": "replay", "path": self.recording}} for n in ("gemma", "llama")
        ]
        self.label["pool"] = {"path": str(root / "pool.parquet")}
        self.label["output"] = {"path": str(root / "out")}
        self.loop = yaml.safe_load((TREC / "loop.yaml").read_text())
        self.loop["annotators"] = self.label["annotators"]
        self.loop["pool"] = {"path": str(root / "pool.parquet")}
        self.loop["gold"] = str(root / "gold.csv")
        self.loop["loop"].update(initial_gold=20, test_fraction=0.2)
        self.loop["output"] = {"path": str(root / "loop-out")}
        self._model: Path | None = None

    def path(self, name: str) -> str:
        return str(self.root / name)

    def write(self, name: str, content: str | bytes) -> str:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def config(self, base: dict, name: str = "c.yaml", **changes: Any) -> str:
        """``base`` with ``changes`` (dotted keys: ``pool__path``; a value DELETE removes the key)."""
        data = json.loads(json.dumps(base))
        for key, value in changes.items():
            *up, last = key.split("__")
            node = data
            for k in up:
                node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
            if value is DELETE:
                del node[last]
            elif isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        return self.write(name, yaml.safe_dump(data, sort_keys=False))

    def label_config(self, **changes: Any) -> str:
        return self.config(self.label, "label.yaml", **changes)

    def loop_config(self, **changes: Any) -> str:
        return self.config(self.loop, "loop.yaml", **changes)

    def table(self, name: str, **columns: list) -> str:
        pq.write_table(pa.table(columns), self.root / name)
        return str(self.root / name)

    @property
    def model(self) -> str:
        """An exported classifier for the TREC labels (a tiny random one: the cases never run it)."""
        if self._model is None:
            from molal_ray.testing.tiny_models import build_head_export

            self._model = build_head_export(self.root / "model", TREC_LABELS, ["what is it", "who is he"])
        return str(self._model)

    def model_copy(self, name: str) -> Path:
        dst = self.root / name
        shutil.copytree(self.model, dst)
        return dst

    def hotter_table(self, config: str, folder: str) -> None:
        """An annotation table at ``folder``, as a run of ``config`` with its first annotator at
        another temperature left it (the manifest only: no rows are needed to refuse it)."""
        from molal_ray.config import LabelJobConfig
        from molal_ray.config.loop import LoopJobConfig
        from molal_ray.pipeline.output import open_output
        from molal_ray.serve.fingerprint import fingerprints

        data = yaml.safe_load(Path(config).read_text())
        data["annotators"][0] = {**data["annotators"][0], "sampling": {"temperature": 0.95}}
        cls = LoopJobConfig if "loop" in data else LabelJobConfig
        cfg = cls.from_file(self.write("hotter.yaml", yaml.safe_dump(data)))
        names = [a.name for a in cfg.annotators]
        open_output(folder, "resume", cfg.task.labels, names, fingerprints=fingerprints(cfg.annotators, cfg.task))

    def predict(self, *more: str) -> list[str]:
        return [
            "predict",
            "--model",
            self.model,
            "--pool",
            self.path("pool.parquet"),
            "--out",
            self.path("pred"),
            *more,
        ]


DELETE = object()


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[World], list[str]]
    expect: str  # a regular expression the message must match: what it names


CASES: list[Case] = []


def case(name: str, expect: str) -> Callable[[Callable[[World], list[str]]], Callable[[World], list[str]]]:
    def register(fn: Callable[[World], list[str]]) -> Callable[[World], list[str]]:
        CASES.append(Case(name, fn, expect))
        return fn

    return register


def simple(name: str, expect: str, argv: Callable[[World], list[str]]) -> None:
    CASES.append(Case(name, argv, expect))


# ---- label: the config file itself ----------------------------------------------------------------
simple("label: no such config file", r"c\.yaml|does not exist|No such", lambda w: ["label", w.path("c.yaml")])
simple("label: an empty config file", r"empty|mapping|task", lambda w: ["label", w.write("c.yaml", "")])
simple("label: a YAML list", r"mapping|list", lambda w: ["label", w.write("c.yaml", "- a\n- b\n")])
simple("label: YAML that does not parse", r"YAML|line", lambda w: ["label", w.write("c.yaml", "task: [a, b\n")])
simple("label: a binary file", r"YAML|UTF-8|mapping", lambda w: ["label", w.write("c.yaml", b"\x89PNG\x00\xff\xfe")])
simple("label: a folder for the config", r"folder|directory|file", lambda w: ["label", str(w.root)])
simple("label: a loop config", r"molal-ray run", lambda w: ["label", w.loop_config()])
simple(
    "label: a serve-app file",
    r"annotators deploy",
    lambda w: ["label", str(Path(__file__).resolve().parents[2] / "serve_configs" / "annotators-cpu.yaml")],
)
# ---- label: task ----------------------------------------------------------------------------------
simple("label: no task", r"task", lambda w: ["label", w.label_config(task=DELETE)])
simple("label: no labels", r"labels", lambda w: ["label", w.label_config(task__labels=DELETE)])
simple("label: one label", r"labels", lambda w: ["label", w.label_config(task__labels=["only"])])
simple(
    "label: a label twice",
    r"labels.*(twice|duplicate|unique)",
    lambda w: ["label", w.label_config(task__labels=["a", "b", "a"])],
)
simple("label: an empty label", r"labels", lambda w: ["label", w.label_config(task__labels=["a", ""])])
simple("label: labels YAML reads as booleans", r"quote", lambda w: ["label", w.write("c.yaml", _yes_no(w))])
simple(
    "label: a prompt with an unknown placeholder",
    r"\{question\}|placeholder",
    lambda w: ["label", w.label_config(task__prompt_template="Question: {question}\nAnswer:")],
)
simple(
    "label: a prompt with a stray brace",
    r"brace|\{\{",
    lambda w: ["label", w.label_config(task__prompt_template="Answer as {json: label} for {text}")],
)
simple(
    "label: an unknown key in the task",
    r"task\.|extra|not permitted|unknown",
    lambda w: ["label", w.label_config(task__lables=["a", "b"])],
)
# ---- label: annotators ----------------------------------------------------------------------------
simple("label: no annotators", r"annotators", lambda w: ["label", w.label_config(annotators=[])])
simple(
    "label: two annotators of one name",
    r"gemma|name",
    lambda w: ["label", w.label_config(annotators__1__name="gemma")],
)
simple(
    "label: an unknown engine type",
    r"type|gpt5",
    lambda w: ["label", w.label_config(annotators__0__engine={"type": "gpt5"})],
)
simple(
    "label: a replay recording that does not exist",
    r"no-such\.parquet|does not exist|not found",
    lambda w: ["label", w.label_config(annotators__0__engine={"type": "replay", "path": w.path("no-such.parquet")})],
)
simple(
    "label: a replay recording that is text",
    r"recording\.txt|Parquet",
    lambda w: [
        "label",
        w.label_config(annotators__0__engine={"type": "replay", "path": w.write("recording.txt", "hello\n")}),
    ],
)
simple(
    "label: a misspelt engine key",
    r"engin|engine",
    lambda w: [
        "label",
        w.label_config(annotators__0={"name": "gemma", "engin": {"type": "replay", "path": w.recording}}),
    ],
)
simple(
    "label: an hf model folder that does not exist",
    r"model.*(no-model|folder)",
    lambda w: ["label", w.label_config(annotators__0__engine={"type": "hf", "model": w.path("no-model")})],
)
simple(
    "label: a vllm GGUF file that does not exist",
    r"model.*(missing\.gguf|GGUF)",
    lambda w: ["label", w.label_config(annotators__0__engine={"type": "vllm", "model": w.path("missing.gguf")})],
)
simple(
    "label: an openai key variable that is not set",
    r"MOLAL_FUZZ_NO_KEY",
    lambda w: [
        "label",
        w.label_config(
            annotators__0__engine={
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "m",
                "api_key_env": "MOLAL_FUZZ_NO_KEY",
            }
        ),
    ],
)
simple(
    "label: an openai base_url that is no URL",
    r"base_url",
    lambda w: [
        "label",
        w.label_config(annotators__0__engine={"type": "openai", "base_url": "localhost", "model": "m"}),
    ],
)
simple(
    "label: negative CPUs for a replica",
    r"num_cpus",
    lambda w: ["label", w.label_config(annotators__0__resources={"num_cpus": -1})],
)
simple(
    "label: a sampling temperature below 0",
    r"temperature",
    lambda w: ["label", w.label_config(annotators__0__sampling={"temperature": -0.5})],
)
simple("label: top_p above 1", r"top_p", lambda w: ["label", w.label_config(annotators__0__sampling={"top_p": 1.5})])
simple(
    "label: zero samples",
    r"n_samples: got 0",
    lambda w: ["label", w.label_config(annotators__0__sampling={"n_samples": 0})],
)
# ---- label: pool ----------------------------------------------------------------------------------
simple(
    "label: a pool that does not exist",
    r"pool.*(nothing|no-pool|exist|found)",
    lambda w: ["label", w.label_config(pool__path=w.path("no-pool.parquet"))],
)
simple(
    "label: a .tsv pool",
    r"CSV|\.tsv",
    lambda w: ["label", w.label_config(pool__path=w.write("p.tsv", "id\ttext\n1\tWho?\n"))],
)
simple(
    "label: a spreadsheet pool",
    r"CSV|spreadsheet|\.xlsx",
    lambda w: ["label", w.label_config(pool__path=w.write("p.xlsx", b"PK\x03\x04"))],
)
simple(
    "label: a pool without its text column",
    r"no column \['body'\]",
    lambda w: ["label", w.label_config(pool__text_column="body")],
)
simple(
    "label: a pool without its id column",
    r"no column \['qid'\]",
    lambda w: ["label", w.label_config(pool__id_column="qid")],
)
simple(
    "label: an empty pool folder",
    r"pool.*(no files|empty|nothing)",
    lambda w: ["label", w.label_config(pool__path=str(_mkdir(w.root / "empty")))],
)
simple(
    "label: a pool folder of mixed formats",
    r"a\.parquet|b\.csv|format",
    lambda w: ["label", w.label_config(pool__path=_mixed(w))],
)
simple(
    "label: a pool whose text column holds lists",
    r"text.*list",
    lambda w: ["label", w.label_config(pool__path=w.table("lists.parquet", id=["1", "2"], text=[["a"], ["b"]]))],
)
simple(
    "label: a parquet pool that is not parquet",
    r"bad\.parquet|Parquet",
    lambda w: ["label", w.label_config(pool__path=w.write("bad.parquet", "id,text\n1,Who?\n"))],
)
simple(
    "label: a CSV pool without a header row's columns",
    r"text|column",
    lambda w: ["label", w.label_config(pool__path=w.write("p.csv", "1,Who?\n2,Where?\n"))],
)
simple(
    "label: a JSON-lines pool that is not JSON",
    r"p\.jsonl|JSON",
    lambda w: ["label", w.label_config(pool__path=w.write("p.jsonl", "{'id': 1, 'text': 'single quotes'}\n"))],
)
simple("label: an unknown pool format", r"format", lambda w: ["label", w.label_config(pool__format="excel")])
simple("label: a negative bucket count", r"buckets", lambda w: ["label", w.label_config(pool__buckets=-4)])
# ---- label: output and pipeline -------------------------------------------------------------------
simple(
    "label: an output that is a file",
    r"output\.path",
    lambda w: ["label", w.label_config(output__path=w.write("file.txt", "x"))],
)
simple(
    "label: an output under a file",
    r"output\.path",
    lambda w: ["label", w.label_config(output__path=w.write("file.txt", "x") + "/out")],
)
simple(
    "label: an output inside the pool's folder",
    r"inside|pool",
    lambda w: ["label", w.label_config(pool__path=_pool_folder(w), output__path=str(w.root / "pools" / "out"))],
)
simple(
    "label: a pool inside the output folder",
    r"inside|output",
    lambda w: [
        "label",
        w.label_config(pool__path=_pool_folder(w, "outdir/pools"), output__path=str(w.root / "outdir")),
    ],
)
simple("label: an unknown output mode", r"mode", lambda w: ["label", w.label_config(output__mode="append")])


@case("label: resumed with an annotator of the same name at another temperature", r"gemma.*temperature")
def _label_other_settings(w: World) -> list[str]:
    cfg = w.label_config()
    w.hotter_table(cfg, w.path("out"))
    return ["label", cfg]


simple("label: batch size 0", r"batch_size", lambda w: ["label", w.label_config(pipeline__batch_size=0)])
simple("label: negative concurrency", r"concurrency", lambda w: ["label", w.label_config(pipeline__concurrency=-1)])
simple(
    "label: a batch size that is text", r"batch_size", lambda w: ["label", w.label_config(pipeline__batch_size="many")]
)
simple(
    "label: an unknown top-level key",
    r"pipline|extra|not permitted|unknown",
    lambda w: ["label", w.label_config(pipline={"batch_size": 8})],
)
simple(
    "label: --output into a file", r"output", lambda w: ["label", w.label_config(), "--output", w.write("f.txt", "x")]
)
# ---- run: the loop config -------------------------------------------------------------------------
simple("run: a label config", r"molal-ray label", lambda w: ["run", w.label_config()])


@case("run: resumed with an annotator of the same name at another temperature", r"gemma.*temperature")
def _loop_other_settings(w: World) -> list[str]:
    cfg = w.loop_config()
    w.hotter_table(cfg, w.path("loop-out/annotations"))
    return ["run", cfg]


simple("run: no gold file", r"gold", lambda w: ["run", w.loop_config(gold=w.path("no-gold.csv"))])
simple(
    "run: a gold file of other labels",
    r"gold.*(label|sports)",
    lambda w: ["run", w.loop_config(gold=w.write("g.csv", "sample_id,label\n" + _ids(w, 60, "sports")))],
)
simple(
    "run: a gold file without a label column",
    r"gold.*(label|column)",
    lambda w: ["run", w.loop_config(gold=w.write("g.csv", "sample_id,answer\nq1,human\n"))],
)
simple("run: an empty gold file", r"gold", lambda w: ["run", w.loop_config(gold=w.write("g.csv", ""))])
simple(
    "run: gold ids of another pool",
    r"gold.*(none of|pool)",
    lambda w: [
        "run",
        w.loop_config(gold=w.write("g.csv", "sample_id,label\n" + "".join(f"x{i},human\n" for i in range(60)))),
    ],
)
simple(
    "run: initial_gold above the gold rows", r"initial_gold", lambda w: ["run", w.loop_config(loop__initial_gold=500)]
)
simple("run: test_fraction above 1", r"test_fraction", lambda w: ["run", w.loop_config(loop__test_fraction=1.5)])
simple("run: test_fraction 0", r"test_fraction", lambda w: ["run", w.loop_config(loop__test_fraction=0)])
simple("run: rounds 0", r"rounds", lambda w: ["run", w.loop_config(loop__rounds=0)])
simple("run: query_size 0", r"query_size", lambda w: ["run", w.loop_config(loop__query_size=0)])
simple("run: an unknown strategy", r"strategy", lambda w: ["run", w.loop_config(loop__strategy="oracle")])
simple("run: an unknown annotation mode", r"annotation", lambda w: ["run", w.loop_config(loop__annotation="gpt4")])
simple(
    "run: gold annotation that runs out of gold rows",
    r"gold rows needed",
    lambda w: ["run", w.loop_config(loop__annotation="gold", loop__rounds=8, loop__query_size=50)],
)
simple(
    "run: a backbone that does not exist",
    r"backbone",
    lambda w: ["run", w.loop_config(classifier__backbone=w.path("no-bert"))],
)
simple("run: an unknown classifier mode", r"mode", lambda w: ["run", w.loop_config(classifier__mode="svm")])
simple(
    "run: a negative learning rate", r"learning_rate", lambda w: ["run", w.loop_config(classifier__learning_rate=-1)]
)
simple("run: --rounds 0", r"rounds|0", lambda w: ["run", w.loop_config(), "--rounds", "0"])
simple("run: --strategy unknown", r"strategy", lambda w: ["run", w.loop_config(), "--strategy", "oracle"])
simple("run: --annotation unknown", r"annotation", lambda w: ["run", w.loop_config(), "--annotation", "nobody"])
simple("run: --seed that is text", r"seed", lambda w: ["run", w.loop_config(), "--seed", "abc"])
simple(
    "run: --resume where no loop ran", r"resume|nothing|no loop|state", lambda w: ["run", w.loop_config(), "--resume"]
)
simple(
    "run: a review backend of Label Studio with no address",
    r"backend 'label_studio' needs url and project",
    lambda w: ["run", w.loop_config(review={"backend": "label_studio"})],
)
simple("run: an unknown review backend", r"backend", lambda w: ["run", w.loop_config(review={"backend": "email"})])
# ---- check-config ---------------------------------------------------------------------------------
simple("check-config: no such file", r"c\.yaml|does not exist", lambda w: ["check-config", w.path("c.yaml")])
simple(
    "check-config: an unknown kind", r"kind|invoice", lambda w: ["check-config", w.label_config(), "--kind", "invoice"]
)
simple("check-config: labels of one", r"labels", lambda w: ["check-config", w.label_config(task__labels=["a"])])
simple("check-config: a loop with no gold", r"gold", lambda w: ["check-config", w.loop_config(gold=w.path("none.csv"))])
simple(
    "check-config: a pool without a text column",
    r"body|column",
    lambda w: ["check-config", w.label_config(pool__text_column="body")],
)
# ---- aggregate ------------------------------------------------------------------------------------
simple(
    "aggregate: an annotation table that does not exist",
    r"--annotations: .*no-table does not exist",
    lambda w: [*_agg(w), "--annotations", w.path("no-table"), "--out", w.path("agg.parquet")],
)
simple(
    "aggregate: a folder that is no annotation table",
    r"annotation|manifest|parts",
    lambda w: [*_agg(w), "--annotations", str(_mkdir(w.root / "empty-table")), "--out", w.path("agg.parquet")],
)
simple(
    "aggregate: a table of other columns",
    r"column|annotation",
    lambda w: [
        *_agg(w),
        "--annotations",
        w.table("t.parquet", a=[1, 2]),
        "--labels",
        ",".join(TREC_LABELS),
        "--out",
        w.path("agg.parquet"),
    ],
)
simple(
    "aggregate: --out an existing folder",
    r"--out",
    lambda w: [*_agg(w), "--annotations", _table(w), "--out", str(_mkdir(w.root / "agg-folder"))],
)
simple(
    "aggregate: --out under a file",
    r"--out",
    lambda w: [*_agg(w), "--annotations", _table(w), "--out", w.write("f.txt", "x") + "/agg.parquet"],
)
simple(
    "aggregate: --report under a file",
    r"--report",
    lambda w: [
        *_agg(w),
        "--annotations",
        _table(w),
        "--out",
        w.path("a.parquet"),
        "--report",
        w.write("f.txt", "x") + "/r.json",
    ],
)
simple(
    "aggregate: --labels in another order than the table's",
    r"labels",
    lambda w: [
        *_agg(w),
        "--annotations",
        _table(w),
        "--labels",
        ",".join(reversed(TREC_LABELS)),
        "--out",
        w.path("a.parquet"),
    ],
)
simple(
    "aggregate: --labels of other names",
    r"labels",
    lambda w: [*_agg(w), "--annotations", _table(w), "--labels", "x,y,z", "--out", w.path("a.parquet")],
)
simple(
    "aggregate: a table without a manifest and no --labels",
    r"--labels",
    lambda w: [*_agg(w), "--annotations", _bare_table(w), "--out", w.path("a.parquet")],
)
simple(
    "aggregate: a gold file that does not exist",
    r"gold|no-gold",
    lambda w: ["aggregate", "--annotations", _table(w), "--gold", w.path("no-gold.csv"), "--out", w.path("a.parquet")],
)
simple(
    "aggregate: an unknown method",
    r"--method: .*got 'oracle'",
    lambda w: [*_agg(w), "--annotations", _table(w), "--method", "oracle", "--out", w.path("a.parquet")],
)
simple(
    "aggregate: a labels file that does not exist",
    r"no-labels\.txt is no file",
    lambda w: [
        *_agg(w),
        "--annotations",
        _bare_table(w),
        "--labels",
        w.path("no-labels.txt"),
        "--out",
        w.path("a.parquet"),
    ],
)
simple(
    "aggregate: --folds 1",
    r"folds",
    lambda w: [*_agg(w), "--annotations", _table(w), "--folds", "1", "--out", w.path("a.parquet")],
)
# ---- review ---------------------------------------------------------------------------------------
simple(
    "review import: no such file",
    r"no-review\.csv|not exist|No such",
    lambda w: ["review", "import", w.path("no-review.csv"), "--labels", "a,b", "--out", w.path("g.csv")],
)
simple(
    "review import: --known that does not exist",
    r"known|no-known",
    lambda w: [
        "review",
        "import",
        _review(w),
        "--labels",
        ",".join(TREC_LABELS),
        "--known",
        w.path("no-known.csv"),
        "--out",
        w.path("g.csv"),
    ],
)
simple(
    "review import: a label outside the set",
    r"sports|label",
    lambda w: ["review", "import", _review(w, "sports"), "--labels", ",".join(TREC_LABELS), "--out", w.path("g.csv")],
)
simple(
    "review import: no sample_id column",
    r"sample_id",
    lambda w: [
        "review",
        "import",
        w.write("r.csv", "id,label\nq1,human\n"),
        "--labels",
        ",".join(TREC_LABELS),
        "--out",
        w.path("g.csv"),
    ],
)
simple(
    "review import: an empty file",
    r"r\.csv|empty|sample_id",
    lambda w: ["review", "import", w.write("r.csv", ""), "--labels", ",".join(TREC_LABELS), "--out", w.path("g.csv")],
)
simple(
    "review import: --loop that holds no loop",
    r"loop",
    lambda w: ["review", "import", _review(w), "--loop", str(_mkdir(w.root / "no-loop")), "--round", "1"],
)
simple(
    "review import: --loop and --labels together",
    r"leave --labels and --out out",
    lambda w: [
        "review",
        "import",
        _review(w),
        "--loop",
        str(_mkdir(w.root / "no-loop")),
        "--round",
        "1",
        "--labels",
        "a,b",
    ],
)
simple(
    "review import: neither --loop nor --out",
    r"--out|--loop",
    lambda w: ["review", "import", _review(w), "--labels", ",".join(TREC_LABELS)],
)
simple(
    "review import: --out under a file",
    r"--out",
    lambda w: [
        "review",
        "import",
        _review(w),
        "--labels",
        ",".join(TREC_LABELS),
        "--out",
        w.write("f.txt", "x") + "/g.csv",
    ],
)
simple(
    "review export: an aggregated table that does not exist",
    r"no-agg|aggregated",
    lambda w: [
        "review",
        "export",
        "--labels",
        ",".join(TREC_LABELS),
        "--aggregated",
        w.path("no-agg.parquet"),
        "--texts",
        w.path("pool.parquet"),
        "--out",
        w.path("r.csv"),
    ],
)
simple(
    "review export: a Parquet file that is not an aggregate output",
    r"without \['probs', 'confidence', 'is_gold'\]",
    lambda w: [
        "review",
        "export",
        "--labels",
        ",".join(TREC_LABELS),
        "--aggregated",
        w.table("agg.parquet", sample_id=["q1"], label=["human"]),
        "--texts",
        w.path("pool.parquet"),
        "--out",
        w.path("r.csv"),
    ],
)
simple(
    "label: a recording whose answers are numbers",
    r"samples is list<.*int64>; expected a list of texts",
    lambda w: [
        "label",
        w.label_config(
            annotators__0__engine={
                "type": "replay",
                "path": w.table(
                    "rec.parquet", sample_id=["q1"], annotator=["gemma"], label_probs=[[0.5, 0.5]], samples=[[1, 2]]
                ),
            }
        ),
    ],
)
simple(
    "review push: an aggregated table that does not exist",
    r"no-agg",
    lambda w: [
        "review",
        "push",
        "--labels",
        ",".join(TREC_LABELS),
        "--aggregated",
        w.path("no-agg.parquet"),
        "--texts",
        w.path("pool.parquet"),
        "--url",
        "http://127.0.0.1:9",
        "--project",
        "p",
        "--token-env",
        "MOLAL_FUZZ_NO_TOKEN",
    ],
)
simple(
    "review pull: the token variable not set",
    r"MOLAL_FUZZ_NO_TOKEN|token",
    lambda w: [
        "review",
        "pull",
        "--url",
        "http://127.0.0.1:9",
        "--project",
        "p",
        "--token-env",
        "MOLAL_FUZZ_NO_TOKEN",
        "--labels",
        ",".join(TREC_LABELS),
        "--out",
        w.path("g.csv"),
    ],
)
# ---- annotators -----------------------------------------------------------------------------------
simple("annotators scale: no target", r"--replicas|--min|--max", lambda w: ["annotators", "scale", "gemma"])
simple(
    "annotators scale: no cluster here",
    r"no Ray cluster",
    lambda w: ["annotators", "scale", "gemma", "--replicas", "2"],
)
simple("annotators delete: no cluster here", r"no Ray cluster", lambda w: ["annotators", "delete"])
simple(
    "annotators scale: negative replicas", r"replicas", lambda w: ["annotators", "scale", "gemma", "--replicas", "-1"]
)
simple(
    "annotators scale: min above max",
    r"min|max",
    lambda w: ["annotators", "scale", "gemma", "--min", "3", "--max", "1"],
)
simple(
    "annotators scale: --replicas with --min",
    r"replicas|min",
    lambda w: ["annotators", "scale", "gemma", "--replicas", "2", "--min", "1"],
)
simple(
    "annotators deploy: no such file",
    r"no-app\.yaml|not exist|No such",
    lambda w: ["annotators", "deploy", w.path("no-app.yaml")],
)
simple(
    "annotators deploy: a file with no annotators in it",
    r"annotators|applications",
    lambda w: ["annotators", "deploy", w.write("app.yaml", "pool: {path: p.parquet}\n")],
)
simple(
    "annotators status: an address where nothing answers",
    r"127\.0\.0\.1:9|answer|reach",
    lambda w: ["annotators", "status", "--address", "127.0.0.1:9"],
)
# ---- predict --------------------------------------------------------------------------------------
simple(
    "predict: a model folder that does not exist",
    r"--model|no-model",
    lambda w: ["predict", "--model", w.path("no-model"), "--pool", w.path("pool.parquet"), "--out", w.path("pred")],
)
simple(
    "predict: a model folder with no export in it",
    r"--model|classifier\.json|export",
    lambda w: [
        "predict",
        "--model",
        str(_mkdir(w.root / "not-a-model")),
        "--pool",
        w.path("pool.parquet"),
        "--out",
        w.path("pred"),
    ],
)
simple(
    "predict: a model whose classifier.json is not JSON",
    r"classifier\.json|JSON",
    lambda w: [
        "predict",
        "--model",
        _spoil(w, "classifier.json", "{not json"),
        "--pool",
        w.path("pool.parquet"),
        "--out",
        w.path("pred"),
    ],
)
simple(
    "predict: a Hugging Face folder without id2label",
    r"id2label",
    lambda w: ["predict", "--model", _hf_without_labels(w), "--pool", w.path("pool.parquet"), "--out", w.path("pred")],
)
simple(
    "predict: a pool that does not exist",
    r"pool|no-pool",
    lambda w: ["predict", "--model", w.model, "--pool", w.path("no-pool.parquet"), "--out", w.path("pred")],
)
simple("predict: a pool without its text column", r"body|column", lambda w: w.predict("--text-column", "body"))
simple("predict: a pool without its id column", r"qid|column", lambda w: w.predict("--id-column", "qid"))
simple(
    "predict: an output inside the pool's folder",
    r"inside|pool",
    lambda w: ["predict", "--model", w.model, "--pool", _pool_folder(w), "--out", str(w.root / "pools" / "pred")],
)
simple(
    "predict: an output that is a file",
    r"out|output",
    lambda w: ["predict", "--model", w.model, "--pool", w.path("pool.parquet"), "--out", w.write("f.txt", "x")],
)
simple("predict: --budget 0", r"budget", lambda w: w.predict("--escalate", w.label_config(), "--budget", "0"))
simple("predict: --budget 1.5", r"budget", lambda w: w.predict("--escalate", w.label_config(), "--budget", "1.5"))
simple("predict: --below -0.1", r"below", lambda w: w.predict("--escalate", w.label_config(), "--below", "-0.1"))
simple("predict: --below 2", r"below", lambda w: w.predict("--escalate", w.label_config(), "--below", "2"))
simple(
    "predict: --budget and --below",
    r"budget.*below|below.*budget",
    lambda w: w.predict("--escalate", w.label_config(), "--budget", "0.2", "--below", "0.5"),
)
simple("predict: --escalate with neither", r"budget|below", lambda w: w.predict("--escalate", w.label_config()))
simple("predict: --budget without --escalate", r"escalate", lambda w: w.predict("--budget", "0.2"))
simple("predict: --people without --escalate", r"escalate|people", lambda w: w.predict("--people", "5"))
simple(
    "predict: --people -1",
    r"people",
    lambda w: w.predict("--escalate", w.label_config(), "--budget", "0.2", "--people", "-1"),
)
simple(
    "predict: --escalate a loop config",
    r"label config|molal-ray run|escalate",
    lambda w: w.predict("--escalate", w.loop_config(), "--budget", "0.2"),
)
simple(
    "predict: --escalate with other labels",
    r"labels",
    lambda w: w.predict("--escalate", w.label_config(task__labels=["a", "b", "c"]), "--budget", "0.2"),
)
simple(
    "predict: --escalate with the labels in another order",
    r"order|labels",
    lambda w: w.predict("--escalate", w.label_config(task__labels=list(reversed(TREC_LABELS))), "--budget", "0.2"),
)


@case("predict: --escalate resumed with an annotator of the same name at another temperature", r"gemma.*temperature")
def _escalate_other_settings(w: World) -> list[str]:
    cfg = w.label_config()
    w.hotter_table(cfg, w.path("pred/escalation"))
    return w.predict("--escalate", cfg, "--budget", "0.2")


simple(
    "predict: --escalate that does not exist",
    r"no-label\.yaml|not exist",
    lambda w: w.predict("--escalate", w.path("no-label.yaml"), "--budget", "0.2"),
)
simple(
    "predict: --known that is no labels table",
    r"known",
    lambda w: w.predict("--known", w.table("k.parquet", a=[1])),
)
simple(
    "predict: --known with a label the model lacks",
    r"known|sports",
    lambda w: w.predict("--known", w.table("k.parquet", sample_id=["q1"], label=["sports"], source=["gold"])),
)
simple("predict: --batch-size 0", r"batch-size", lambda w: w.predict("--batch-size", "0"))
simple("predict: --concurrency 0", r"concurrency", lambda w: w.predict("--concurrency", "0"))
simple("predict: --num-gpus -1", r"num-gpus", lambda w: w.predict("--num-gpus", "-1"))
simple(
    "predict: an unknown aggregator",
    r"aggregator",
    lambda w: w.predict("--escalate", w.label_config(), "--budget", "0.2", "--aggregator", "oracle"),
)
simple(
    "predict: an unknown combine rule",
    r"combine",
    lambda w: w.predict("--escalate", w.label_config(), "--budget", "0.2", "--combine", "sum"),
)
simple(
    "predict: --label-studio without --people",
    r"people|label-studio",
    lambda w: w.predict("--escalate", w.label_config(), "--budget", "0.2", "--label-studio", "http://127.0.0.1:9"),
)
# ---- export ---------------------------------------------------------------------------------------
simple("export: a folder that holds no loop", r"loop|state", lambda w: ["export", str(_mkdir(w.root / "no-loop"))])
simple(
    "export: a folder that does not exist", r"no-loop-here|not exist|loop", lambda w: ["export", w.path("no-loop-here")]
)
simple("export: --round -1", r"round", lambda w: ["export", str(_mkdir(w.root / "no-loop")), "--round", "-1"])
simple(
    "export: --to a file",
    r"--to|file",
    lambda w: ["export", str(_mkdir(w.root / "no-loop")), "--to", w.write("f.txt", "x")],
)


# ---- helpers the cases share ----------------------------------------------------------------------
def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _yes_no(w: World) -> str:
    text = Path(w.label_config()).read_text()
    assert "- abbreviation\n" in text and "- entity\n" in text
    return text.replace("- abbreviation\n", "- yes\n").replace("- entity\n", "- no\n")


def _mixed(w: World) -> str:
    d = _mkdir(w.root / "mixed")
    pq.write_table(pa.table({"id": ["1"], "text": ["Who?"]}), d / "a.parquet")
    (d / "b.csv").write_text("id,text\n2,Where?\n")
    return str(d)


def _pool_folder(w: World, under: str = "pools") -> str:
    d = _mkdir(w.root / under)
    shutil.copy(w.root / "pool.parquet", d / "pool.parquet")
    return str(d)


def _ids(w: World, n: int, label: str) -> str:
    ids = pq.read_table(w.root / "pool.parquet", columns=["id"]).column("id").to_pylist()[:n]
    return "".join(f"{i},{label}\n" for i in ids)


def _table(w: World) -> str:
    """A synthetic annotation table in a label output folder with its manifest (the TREC labels),
    written by the label job's own writer (no Ray)."""
    out = w.root / "table"
    if not out.exists():
        from molal_ray.pipeline.output import open_output, write_part
        from molal_ray.testing.synthetic import synthetic_table

        table, truth = synthetic_table(200, seed=1)
        names = sorted(set(table.column("annotator").to_pylist()))
        write_part(open_output(out, "overwrite", TREC_LABELS, names).parts, table)
        w.write(
            "agg-gold.csv",
            "sample_id,label\n" + "".join(f"s{i:08d},{TREC_LABELS[k]}\n" for i, k in enumerate(truth[:40])),
        )
    return str(out)


def _agg(w: World) -> list[str]:
    """``aggregate --gold`` with the synthetic table's gold rows (the table is written first)."""
    _table(w)
    return ["aggregate", "--gold", w.path("agg-gold.csv")]


def _bare_table(w: World) -> str:
    """The same rows as one Parquet file, without the manifest that names the labels."""
    from molal_ray.pipeline.output import read_annotation_table

    path = w.root / "bare.parquet"
    pq.write_table(read_annotation_table(_table(w)), path)
    return str(path)


def _review(w: World, label: str = "human") -> str:
    return w.write("review.csv", f"sample_id,text,label\nq1,Who?,{label}\n")


def _spoil(w: World, name: str, content: str) -> str:
    d = w.model_copy(f"spoilt-{name}")
    (d / name).write_text(content)
    return str(d)


def _hf_without_labels(w: World) -> str:
    d = _mkdir(w.root / "hf-no-labels")
    (d / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"]})
    )
    return str(d)


class _TooLong(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _TooLong(f"still running after {LIMIT_S} s")


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.delenv("MOLAL_FUZZ_NO_KEY", raising=False)
    monkeypatch.delenv("MOLAL_FUZZ_NO_TOKEN", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return World(tmp_path)


def test_the_list_is_long_enough_and_each_case_is_named_once():
    names = [c.name for c in CASES]
    assert len(names) >= 100 and len(set(names)) == len(names)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_a_wrong_input_ends_in_one_clear_line(world, c):
    argv = c.argv(world)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        result = CliRunner().invoke(main, argv, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out = result.output
    where = f"{c.name}: molal-ray {' '.join(argv)}\n{out}"
    import ray

    started = ray.is_initialized()
    if started:  # the wrong input got past every check: stop the Ray it started, then fail
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    assert not started, f"Ray was started: {where}"
    assert not isinstance(result.exception, _TooLong), where
    assert result.exit_code == 2, f"exit {result.exit_code} ({result.exception!r}): {where}"
    assert "Traceback" not in out, where
    errors = [line for line in out.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, where
    assert len(out.strip().splitlines()) <= MAX_LINES, where
    assert re.search(c.expect, out, re.IGNORECASE | re.DOTALL), where
