"""`molal-ray predict`: a loop's exported classifier over a whole pool (``job.py``, with the Ray
Data stage in ``stage.py``), and student-first labelling: only the doubtful texts go to the LLM
annotators (``escalate.py``)."""
