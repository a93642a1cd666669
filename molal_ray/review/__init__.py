"""People in the loop: which samples go to them, the review files, and a labeling server.

- :mod:`~molal_ray.review.selection`: the least certain samples and what each LLM answered.
- :mod:`~molal_ray.review.files`: the CSV and Label Studio files of the file hand-off, read
  back and checked whole.
- :mod:`~molal_ray.review.backend`: where a round's samples go (``review.backend``): files, or
  a running Label Studio (:mod:`~molal_ray.review.label_studio`), and the wait for people.
"""

from molal_ray.review.files import (
    CSV_COLUMNS,
    ReviewItem,
    check_labelstudio_config,
    checked_labels,
    csv_text,
    gold_csv,
    labelstudio_answers,
    labelstudio_config,
    labelstudio_tasks,
    read_review,
    spreadsheet_safe,
)
from molal_ray.review.selection import (
    agreement,
    answers_by_sample,
    least_certain,
    matrix_answers,
    review_items,
    texts_for_review,
    to_review,
    uncertainty,
)

__all__ = [
    "CSV_COLUMNS",
    "ReviewItem",
    "agreement",
    "matrix_answers",
    "answers_by_sample",
    "check_labelstudio_config",
    "checked_labels",
    "csv_text",
    "gold_csv",
    "labelstudio_answers",
    "labelstudio_config",
    "labelstudio_tasks",
    "least_certain",
    "read_review",
    "spreadsheet_safe",
    "review_items",
    "texts_for_review",
    "to_review",
    "uncertainty",
]
