"""The loop's products in a user's hands: a portable classifier (``OUT/model``), every labelled row
with its source (``OUT/labels.parquet``), and loading the classifier back."""

from molal_ray.export.model import Classifier, load_classifier
from molal_ray.export.products import LABELS_SCHEMA, ExportSummary, export_loop, labels_table

__all__ = ["LABELS_SCHEMA", "Classifier", "ExportSummary", "export_loop", "labels_table", "load_classifier"]
