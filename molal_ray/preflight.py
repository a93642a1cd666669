"""Checks of the files a config names, before Ray starts or any annotator is asked.

``check_files(cfg)`` looks at every file a label or loop config names: the pool's files exist, are
of the format they claim (Parquet's magic bytes, text for CSV and JSONL, gzip where named so) and
hold the id and text columns (the header of a CSV, the schema of a Parquet file, the first
records of JSONL); the gold file reads and its labels are in the label set; each replay
recording exists and is Parquet or JSON lines; a local model folder or GGUF file exists; the
few-shot examples read and match the label set and the pool. All problems are reported together,
one line each, as one :class:`ConfigError`. Files behind a URI are checked the same way through
``pyarrow.fs``.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from typing import Any

import pyarrow as pa

from molal_ray.exceptions import ConfigError, MolalError, one_line

_SNIFF = 64 << 10
MAX_FILES_CHECKED = 100  # pool files sniffed (a pool of many files: the first ones)


def _head(fs: Any, path: str, n: int = _SNIFF) -> bytes:
    with fs.open_input_file(path) as f:
        return f.read(n)


def _text_head(raw: bytes, name: str) -> bytes:
    if name.lower().endswith(".gz"):
        if raw[:2] != b"\x1f\x8b":
            raise ValueError("named .gz but not gzip-compressed")
        try:
            return gzip.GzipFile(fileobj=io.BytesIO(raw)).read(_SNIFF)
        except EOFError:  # the sniffed head ends inside the stream: what was read is enough
            d = gzip.GzipFile(fileobj=io.BytesIO(raw))
            out = b""
            try:
                while chunk := d.read(4096):
                    out += chunk
            except EOFError:
                pass
            return out
    if raw[:4] == b"PAR1":
        raise ValueError("a Parquet file (it starts with PAR1)")
    if raw[:2] == b"\x1f\x8b":
        raise ValueError("gzip-compressed, but not named .gz")
    if b"\x00" in raw:
        raise ValueError("binary (it holds NUL bytes), not text")
    return raw


def check_pool_file(fs: Any, path: str, fmt: str, id_col: str, text_col: str) -> None:
    """Raise ValueError naming what is wrong with one pool file."""
    name = os.path.basename(path)
    raw = _head(fs, path)
    if not raw:
        return  # an empty file holds no rows; nothing to flag
    if fmt == "parquet":
        if raw[:4] != b"PAR1":
            raise ValueError("not a Parquet file (no PAR1 magic bytes)")
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            try:
                arrow_schema = pq.ParquetFile(f).schema_arrow
            except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file
                raise ValueError(f"an unreadable Parquet file ({one_line(exc)})") from None
        names = arrow_schema.names
        missing = [c for c in (id_col, text_col) if c not in names]
        if missing:
            raise ValueError(f"no column {missing} (it has {names})")
        from molal_ray.pipeline.pool import nested_type

        for field, c in (("pool.text_column", text_col), ("pool.id_column", id_col)):
            if nested_type(arrow_schema.field(c).type):
                raise ValueError(
                    f"column {c!r} ({field}) holds {arrow_schema.field(c).type}, not text: name a column of "
                    "strings, or flatten this one into one"
                )
        return
    text = _text_head(raw, name)
    if fmt == "csv":
        import csv

        header = next(csv.reader(io.StringIO(text.decode("utf-8-sig", "replace").split("\n", 1)[0])), [])
        missing = [c for c in (id_col, text_col) if c not in header]
        if missing:
            raise ValueError(f"no column {missing} in its header line {header[:10]}")
        return
    # JSON lines: the first records must be objects; the text column must be in one of them.
    lines = [ln for ln in text.split(b"\n")[:-1] if ln.strip()][:100] or [text]
    seen_text = False
    for ln in lines:
        try:
            obj = json.loads(ln)
        except ValueError:
            continue  # a bad line becomes a flagged row
        if isinstance(obj, dict) and text_col in obj:
            if isinstance(obj[text_col], list | dict):
                kind = "a list" if isinstance(obj[text_col], list) else "an object"
                raise ValueError(f"the column {text_col!r} (pool.text_column) holds {kind}, not text")
            seen_text = True
            break
    if not seen_text:
        raise ValueError(f"none of its first {len(lines)} records is a JSON object with the column {text_col!r}")


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _local_model(value: str) -> bool:
    """A model named by a path (absolute, ``./``, ``~`` or of more than two parts: no hub name
    looks so; a relative one was taken from the config's folder when the config was read)."""
    return os.path.isabs(value) or value.startswith((".", "~")) or value.count("/") > 1


def check_files(cfg: Any) -> None:
    """All problems with the files of a label or loop config (``LabelJobConfig`` or
    ``LoopJobConfig``), as one ConfigError; nothing when every file is as claimed."""
    from molal_ray.storage import resolve

    problems: list[str] = []

    def guard(field: str, fn: Any) -> Any:
        """``fn()``, or None with its error (or its storage's silence) as one problem line."""
        try:
            answered, value = within(STORAGE_ANSWER_S, fn)
        except (MolalError, ValueError, OSError) as exc:
            problems.append(f"{field}: {one_line(exc)}")
            return None
        if not answered:
            problems.append(f"{field}: {silent(STORAGE_ANSWER_S)}")
        return value

    pool = getattr(cfg, "pool", None)
    if pool is not None:
        problems += pool_problems(pool)
        output = getattr(getattr(cfg, "output", None), "path", None)
        if output is not None:
            problems += nesting_problems(pool.path, output)
    output_path = getattr(getattr(cfg, "output", None), "path", None)
    if output_path is not None:
        from molal_ray.storage import write_problem

        problem = write_problem(output_path, folder=True)  # local paths only: asks no storage
        if problem:
            problems.append(f"output.path: {problem}")
        elif cfg.output.mode == "resume":  # the table it resumes holds the same annotators, if any

            def same_annotators(out: str = output_path) -> None:
                from molal_ray.layout import LoopLayout
                from molal_ray.pipeline.output import check_table_settings
                from molal_ray.serve.fingerprint import fingerprints

                table = LoopLayout.at(out).annotations.root if getattr(cfg, "loop", None) is not None else out
                try:
                    check_table_settings(table, fingerprints(cfg.annotators, cfg.task))
                except ConfigError as exc:  # it names its field
                    problems.append(str(exc))

            guard("output.path", same_annotators)
    task = cfg.task
    gold = getattr(cfg, "gold", None) or (cfg.cascade.gold if getattr(cfg, "cascade", None) else None)
    if gold:
        from molal_ray.aggregation.api import load_gold

        gold_df = guard("gold", lambda: load_gold(gold, task.labels))
        loop = getattr(cfg, "loop", None)
        if gold_df is not None and loop is not None:
            in_pool = None if pool is None or problems else pool_ids_among(pool, gold_df["sample_id"].tolist())
            if in_pool == 0 and pool is not None:
                problems.append(
                    f"gold: none of the {len(gold_df)} ids of {gold} is an id of the pool (first gold id "
                    f"{gold_df['sample_id'].iloc[0]!r}): the gold labels of another pool, or pool.id_column "
                    f"({pool.id_column!r}) is not the column they name?"
                )
            else:
                problems += gold_count_problems(len(gold_df) if in_pool is None else in_pool, loop, len(gold_df))
    classifier = getattr(cfg, "classifier", None)
    missing = None if classifier is None else missing_model_folder(classifier.backbone)
    if missing:
        problems.append(f"classifier.backbone: {missing}")
    for i, ann in enumerate(cfg.annotators):
        eng = ann.engine
        where = f"annotators[{i}] ({ann.name}).engine"
        if eng.type == "replay":

            def recording(path: str = eng.path) -> None:
                loc = resolve(path, field="path")
                if not loc.is_file():
                    raise ValueError(f"got {path!r}; expected an existing recording file")
                with loc.fs.open_input_file(loc.path) as f:
                    head = f.read(4)
                if head != b"PAR1" and head[:2] != b"\x1f\x8b" and not head.lstrip()[:1] == b"{":
                    raise ValueError(f"{path!r} is neither Parquet nor JSON lines (gzipped or not)")
                if head == b"PAR1":  # its columns and their types, from the footer (no rows read)
                    import pyarrow.parquet as pq

                    from molal_ray.engines.recording import check_recording_schema

                    with loc.fs.open_input_file(loc.path) as f:
                        check_recording_schema(pq.read_schema(f), path)

            guard(f"{where}.path", recording)
        elif eng.type == "openai" and eng.api_key_env and not os.environ.get(eng.api_key_env):
            problems.append(
                f"{where}.api_key_env: the variable {eng.api_key_env} is not set (or empty) here; it holds the "
                "server's API key: export it before the job starts, or leave api_key_env out for a server "
                "without one"
            )
        elif eng.type in ("hf", "vllm") and _local_model(eng.model):
            path = os.path.expanduser(eng.model)
            if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))) and not (
                os.path.isfile(path) and path.lower().endswith(".gguf")
            ):
                problems.append(
                    f"{where}.model: got {path!r}; expected a model folder (with config.json) or a GGUF file"
                )
    if task.few_shot is not None and task.few_shot.items is None:
        from molal_ray.engines.few_shot import with_examples

        guard("few-shot", lambda: with_examples(task, pool))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) with the files the config names:\n  " + "\n  ".join(problems))


POOL_IDS_READ_BYTES = 256 << 20
"""The pre-flight reads a local pool's ids (to count the gold ids in it) up to this many bytes of
pool files; a larger pool, or one on object storage, is counted by the loop once it is read."""


def pool_ids_among(pool: Any, ids: list[str]) -> int | None:
    """How many of ``ids`` are ids of the pool's rows, read from its files (the id column only);
    None when the pool is on object storage or larger than ``POOL_IDS_READ_BYTES``, or its ids
    cannot be read here (the pool's own checks say why)."""
    import pyarrow.compute as pc

    from molal_ray.pipeline.pool_store import list_pool_files
    from molal_ray.storage import is_uri

    if is_uri(pool.path):
        return None
    try:
        fs, files, fmt = list_pool_files(pool)
        if sum(f.size or 0 for f in files) > POOL_IDS_READ_BYTES:
            return None
        want = pa.array(sorted(set(ids)), pa.string())
        found: set[str] = set()
        for f in files:
            col = _id_column(fs, f.path, fmt, pool.id_column)
            if col is None:
                return None
            col = pc.cast(col, pa.string())
            found.update(pc.filter(col, pc.is_in(col, value_set=want)).to_pylist())
        return len(found)
    except (MolalError, ValueError, OSError, pa.ArrowException):
        return None


def _id_column(fs: Any, path: str, fmt: str, id_col: str) -> Any:
    """The id column of one pool file, or None when it is not a plain column (left to the pool's checks)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as fh:
        if fmt == "parquet":
            return pq.read_table(fh, columns=[id_col]).column(id_col)
        raw = fh.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    if fmt == "csv":
        return pacsv.read_csv(
            io.BytesIO(raw),
            convert_options=pacsv.ConvertOptions(include_columns=[id_col], column_types={id_col: pa.string()}),
        ).column(id_col)
    values = []
    for line in raw.decode("utf-8-sig", "replace").splitlines():
        if line.strip():
            rec = json.loads(line)
            v = rec.get(id_col) if isinstance(rec, dict) else None
            values.append(None if v is None or isinstance(v, (list, dict)) else str(v))
    return pa.array(values, pa.string())


def gold_count_problems(n_gold: int, loop: Any, of: int | None = None) -> list[str]:
    """Whether ``n_gold`` gold rows (those whose ids are pool ids, when the pool could be read) can
    give the loop its test split and round 0's ``initial_gold`` rows (a pool too large to read in
    the pre-flight is counted by the loop once it is read)."""
    n_test = int(round(n_gold * loop.test_fraction))
    if loop.test_max:
        n_test = min(n_test, loop.test_max)
    left = n_gold - n_test
    rows = (
        f"the gold file has {n_gold} rows"
        if of is None or of == n_gold
        else f"{n_gold} of the gold file's {of} rows are pool rows"
    )
    split = f"{rows} and loop.test_fraction {loop.test_fraction:g} holds {n_test} of them out"
    if left < loop.initial_gold:
        return [
            f"loop.initial_gold: {loop.initial_gold} gold rows asked for round 0; {split} as the test split, "
            f"leaving {left}: lower initial_gold or test_fraction, or add gold rows"
        ]
    need = loop.initial_gold + loop.rounds * loop.query_size
    # Every query is labelled from the gold file. Counted over the whole file: a pool that holds
    # fewer rows than the rounds ask ends its rounds short with a warning, which is no error.
    total = n_gold if of is None else of
    left_all = total - min(int(round(total * loop.test_fraction)), loop.test_max or total)
    if loop.annotation == "gold" and left_all < need:
        split_all = f"the gold file has {total} rows and loop.test_fraction {loop.test_fraction:g} holds out"
        return [
            f"loop.annotation 'gold': {need} gold rows needed ({loop.initial_gold} for round 0, {loop.rounds} rounds "
            f"of {loop.query_size}); {split_all} {total - left_all}, leaving {left_all}: fewer rounds, a lower "
            "test_fraction, or more gold rows"
        ]
    return []


def nesting_problems(pool_path: str, output_path: str) -> list[str]:
    """An output folder inside the pool's folder (the next run would read the output's own files
    as pool rows) or a pool inside the output folder (a rerun with ``overwrite`` deletes it): one
    line each; [] when they are apart. A pool that is one file may sit beside the output."""
    from molal_ray.storage import is_uri, resolve

    target = pool_path.partition("?")[0] if is_uri(pool_path) else pool_path
    wild = [i for i, ch in enumerate(target) if ch in "*?["]
    from molal_ray.pipeline.pool import format_of

    if is_uri(pool_path) != is_uri(output_path):
        return []  # a local folder and an object store never hold each other
    try:
        pool = resolve(target[: wild[0]].rsplit("/", 1)[0] or "/" if wild else pool_path)
        out = resolve(output_path)
    except (MolalError, ValueError, OSError):
        return []  # a pool or output that cannot be reached is reported by its own check
    # Asked of the name, not of the storage (which may not answer: the pool's own check says so).
    pool_is_folder = bool(wild) or (os.path.isdir(pool.path) if pool.is_local else format_of(pool.name) is None)

    def inside(a: Any, b: Any) -> bool:  # a is b or under it
        same_fs = type(a.fs).__name__ == type(b.fs).__name__
        pa_, pb = a.path.rstrip("/"), b.path.rstrip("/")
        return same_fs and (pa_ == pb or pa_.startswith(pb + "/"))

    if pool_is_folder and inside(out, pool):
        return [
            f"output.path: {output_path!r} is inside the pool's folder {pool_path!r}; a later run would "
            "read the output's files as pool rows: put the output elsewhere"
        ]
    if inside(pool, out):
        return [
            f"pool.path: {pool_path!r} is inside the output folder {output_path!r}, which a run may "
            "overwrite: keep the pool elsewhere"
        ]
    return []


STORAGE_ANSWER_S = 60.0  # how long the check of a pool on object storage waits for it to answer


def within(seconds: float, fn: Any) -> tuple[bool, Any]:
    """``(True, fn())`` when ``fn`` returns within ``seconds``, else ``(False, None)`` (it goes on
    in a daemon thread: a storage client that keeps retrying a dead endpoint is not waited for).
    An exception of ``fn`` is raised here."""
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True, name="molal-preflight")
    t.start()
    t.join(seconds)
    if t.is_alive():
        return False, None
    if "error" in out:
        raise out["error"]
    return True, out.get("value")


def silent(seconds: float) -> str:
    return f"did not answer in {seconds:.0f}s (no network here, a wrong endpoint, or a storage that is down?)"


def pool_problems(pool: Any, field: str = "pool.path") -> list[str]:
    """What is wrong with a pool's files (a ``PoolConfig``), one line each; [] when nothing. Files of
    a pool folder that are not of the pool's format are left out, and a warning names them. A pool
    on object storage that does not answer within ``STORAGE_ANSWER_S`` is one line, not a wait of
    minutes while the storage client retries."""
    from molal_ray.storage import is_uri

    if not is_uri(pool.path):
        return _pool_problems(pool, field)
    answered, problems = within(STORAGE_ANSWER_S, lambda: _pool_problems(pool, field))
    if not answered:
        return [f"{field}: {pool.path} {silent(STORAGE_ANSWER_S)}"]
    return list(problems)


def _pool_problems(pool: Any, field: str) -> list[str]:
    from molal_ray.pipeline.pool_store import list_pool_files, skipped_pool_files

    try:
        fs, files, fmt = list_pool_files(pool)
        skipped = skipped_pool_files(pool)
    except (MolalError, ValueError, OSError) as exc:
        msg = one_line(exc)
        return [msg if msg.startswith(f"{field}: ") else f"{field}: {msg}"]
    if skipped:
        logging.getLogger("molal_ray.pool").warning(
            "%s: %d file(s) that are not %s files are left out of the pool: %s%s",
            field,
            len(skipped),
            fmt,
            ", ".join(skipped[:10]),
            f" and {len(skipped) - 10} more" if len(skipped) > 10 else "",
        )
    problems = []
    for info in files[:MAX_FILES_CHECKED]:
        try:
            check_pool_file(fs, info.path, fmt, pool.id_column, pool.text_column)
        except (ValueError, OSError) as exc:
            problems.append(f"{field} {info.path} (format {fmt}): {one_line(exc)}")
    return problems


def missing_model_folder(name: str) -> str | None:
    """What is wrong with a model named by a path (absolute, ``./``, ``~`` or of more than two
    parts: no hub name looks so) that is no folder here; None for a folder or a hub name."""
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1:
        if not os.path.isdir(os.path.expanduser(name)):
            return f"got {name!r}; no such folder (expected a model folder with config.json)"
    return None


def check_encoder(backbone: str, field: str = "encoder") -> None:
    """A ConfigError when the frozen encoder's config cannot be read (no such folder, a hub name
    that is not in the local cache when offline), before any Ray work starts."""
    from transformers import AutoConfig

    missing = missing_model_folder(backbone)
    if missing:
        raise ConfigError(f"{field}: {missing}")
    try:
        AutoConfig.from_pretrained(backbone)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HFValidationError...
        if "/" in backbone and not os.path.exists(backbone):
            raise ConfigError(
                f"{field}: cannot load {backbone!r}: no folder of that name here (from {os.getcwd()}), and as "
                "a hub name it is not in the local cache (no internet: download it once, or give its folder)"
            ) from None
        raise ConfigError(f"{field}: cannot load {backbone!r} ({one_line(exc)})") from None
