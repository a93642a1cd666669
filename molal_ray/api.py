"""The public front: label a pool, read its annotation table, aggregate, run the loop.

Each takes a config object or the path of its YAML file (relative paths in a file are taken
from the file's folder), as the command line does::

    import molal_ray

    summary = molal_ray.label("examples/trec/label.yaml")             # the annotation table
    table = molal_ray.read_annotations(summary.output)
    result = molal_ray.aggregate(table, "examples/trec/gold-50.csv",
                                 labels=["abbreviation", "entity", "description", "human", "location", "numeric"])
    result.table.to_pandas().head()                                     # one label per sample
    report = molal_ray.run("examples/trec/loop.yaml")                   # the active-learning loop
    clf = molal_ray.load_classifier("runs/trec-loop/model")             # the loop's classifier
    clf.predict(["Who wrote Hamlet?"])                                  # ['human']
    molal_ray.predict(model="runs/trec-loop/model", pool={"path": "pool.parquet"},
                      output={"path": "runs/trec-pred"})                # `molal-ray predict`
    molal_ray.read_predictions("runs/trec-pred")                        # one label per pool row

Everything below these functions (engines, aggregators, strategies, Ray stages) is importable
from its module for those who need more; these names are the ones kept stable.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from molal_ray.aggregation.api import AggregationResult
    from molal_ray.config import LabelJobConfig
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.config.predict import PredictJobConfig
    from molal_ray.inference.job import PredictSummary
    from molal_ray.pipeline.label_job import LabelSummary
    from molal_ray.products import Classifier, ExportSummary

PathLike = str | os.PathLike[str]


def label_config(config: LabelJobConfig | PathLike) -> LabelJobConfig:
    """A label job's config: the object itself, or loaded and validated from a YAML file."""
    from molal_ray.config import LabelJobConfig

    return config if isinstance(config, LabelJobConfig) else LabelJobConfig.from_file(config)


def loop_config(config: LoopJobConfig | PathLike) -> LoopJobConfig:
    """A loop's config: the object itself, or loaded and validated from a YAML file."""
    from molal_ray.config.loop import LoopJobConfig

    return config if isinstance(config, LoopJobConfig) else LoopJobConfig.from_file(config)


def label(config: LabelJobConfig | PathLike) -> LabelSummary:
    """``molal-ray label``: every text of the pool through every annotator into the annotation
    table, exactly once (a rerun on the same output resumes)."""
    from molal_ray.pipeline.label_job import run_label_job

    return run_label_job(label_config(config))


def read_annotations(path: PathLike, columns: list[str] | None = None) -> pa.Table:
    """The annotation table of a label output folder or a Parquet file (a path or a URI): one row
    per (sample, annotator), see :mod:`molal_ray.schema`."""
    from molal_ray.pipeline.output import read_annotation_table

    return read_annotation_table(os.fspath(path), columns=columns)


def aggregate(
    annotations: pa.Table | PathLike,
    gold: pd.DataFrame | PathLike,
    labels: list[str],
    method: str = "default",
    **kwargs: Any,
) -> AggregationResult:
    """``molal-ray aggregate``: one label distribution per sample from the annotation table (a
    table or where it is) and gold labels (a ``sample_id, label`` frame or CSV/Parquet file).
    ``kwargs`` go to :func:`molal_ray.aggregation.api.aggregate` (``embeddings``, ``folds``,
    ``validate``, ...)."""
    import pandas as pd
    import pyarrow as pa

    from molal_ray.aggregation.api import aggregate as run_aggregate
    from molal_ray.aggregation.api import load_gold

    if not isinstance(annotations, pa.Table):  # a label output folder names its labels' order
        from molal_ray.pipeline.output import check_table_labels

        labels = check_table_labels(os.fspath(annotations), list(labels))
    table = annotations if isinstance(annotations, pa.Table) else read_annotations(annotations)
    if isinstance(gold, pd.DataFrame):
        from molal_ray.aggregation.api import check_gold_frame

        gold_df = check_gold_frame(gold, labels)
    else:
        gold_df = load_gold(gold, labels)
    return run_aggregate(table, gold_df, labels, method, **kwargs)


def run(config: LoopJobConfig | PathLike, resume: bool = False) -> dict[str, Any]:
    """``molal-ray run``: the active-learning loop; returns its report (``report.json``)."""
    from molal_ray.loop.runner import run_loop

    return run_loop(loop_config(config), resume=resume)


def export(loop_out: PathLike, round: int | None = None, to: PathLike | None = None) -> ExportSummary:
    """``molal-ray export``: a loop's classifier (of ``round``, the last by default) as a portable
    folder (``to``, by default ``LOOP_OUT/model``) and ``LOOP_OUT/labels.parquet``."""
    from molal_ray.products import export_loop

    return export_loop(os.fspath(loop_out), round, None if to is None else os.fspath(to))


def load_classifier(path: PathLike, device: str = "cpu") -> Classifier:
    """The classifier a loop exported (``OUT/model``, or ``molal-ray export --to``), ready for
    ``predict_proba(texts)`` and ``predict(texts)``, with no file of the loop needed."""
    from molal_ray.products import load_classifier as load

    return load(os.fspath(path), device)


def predict(config: PredictJobConfig | None = None, **fields: Any) -> PredictSummary:
    """``molal-ray predict``: every text of a pool through an exported classifier (Ray Data;
    resumable, each row once), and with ``escalation`` its doubtful texts through the LLM
    annotators. ``config``: a :class:`~molal_ray.config.predict.PredictJobConfig`, or its fields
    as keywords::

        molal_ray.predict(model="runs/trec-loop/model", pool={"path": "pool.parquet"},
                          output={"path": "runs/trec-pred"},  # known: the loop's labels.parquet beside model/
                          escalation={"label_config": "examples/trec/label.yaml", "budget": 0.2})
    """
    from molal_ray.config.predict import PredictJobConfig
    from molal_ray.inference.job import run_predict_job

    if config is None:
        from pydantic import ValidationError

        from molal_ray.config.base import format_validation_error
        from molal_ray.exceptions import ConfigError

        try:
            config = PredictJobConfig.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "predict")) from None
    elif fields:
        raise TypeError("predict: give a config or its fields, not both")
    return run_predict_job(config)


def read_predictions(path: PathLike, columns: list[str] | None = None) -> pa.Table:
    """The labels a ``molal-ray predict`` output holds, one row per pool row (``sample_id, label,
    confidence, source, probs, error, warning``): the escalated final table when there is one."""
    from molal_ray.inference.job import read_predictions as read

    return read(os.fspath(path), columns)
