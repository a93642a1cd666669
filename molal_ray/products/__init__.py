"""The loop's products in a user's hands: a portable classifier (``OUT/model``), every labelled row
with its source (``OUT/labels.parquet``), and loading the classifier back."""

from molal_ray.products.export import LABELS_SCHEMA, ExportSummary, export_loop, labels_table
from molal_ray.products.model import Classifier, load_classifier

__all__ = ["LABELS_SCHEMA", "Classifier", "ExportSummary", "export_loop", "labels_table", "load_classifier"]
