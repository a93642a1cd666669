"""molal_ray: a mixture of LLMs in the active-learning loop (MoLLIA), distributed on Ray.

Entry points: ``molal-ray label`` (:func:`molal_ray.pipeline.label_job.run_label_job`),
``molal-ray aggregate`` (:func:`molal_ray.aggregation.aggregate`) and ``molal-ray run``
(:func:`molal_ray.loop.runner.run_loop`).
"""

__version__ = "0.1.0"
