"""molal_ray: a mixture of LLMs in the active-learning loop (MoLLIA), distributed on Ray.

The public front (:mod:`molal_ray.api`), each from a config object or a YAML path::

    import molal_ray

    summary = molal_ray.label("examples/trec/label.yaml")       # `molal-ray label`
    table = molal_ray.read_annotations(summary.output)          # one row per (sample, annotator)
    result = molal_ray.aggregate(table, "examples/trec/gold-50.csv", labels=[...])  # `molal-ray aggregate`
    report = molal_ray.run("examples/trec/loop.yaml")           # `molal-ray run`
    clf = molal_ray.load_classifier("runs/trec-loop/model")     # its classifier, portable
    molal_ray.predict(model="runs/trec-loop/model", pool={"path": "pool.parquet"},
                      output={"path": "runs/trec-pred"})        # `molal-ray predict`

Importing the package is cheap: Ray, torch and the rest load when a function is called.
"""

from molal_ray.api import (
    aggregate,
    export,
    label,
    label_config,
    load_classifier,
    loop_config,
    predict,
    read_annotations,
    read_predictions,
    run,
)

__version__ = "0.1.0"

__all__ = [
    "aggregate",
    "export",
    "label",
    "label_config",
    "load_classifier",
    "loop_config",
    "predict",
    "read_annotations",
    "read_predictions",
    "run",
    "__version__",
]
