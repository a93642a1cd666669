"""Job entrypoint: label a pool with a loop's classifier on the cluster (and escalate its doubtful texts).

    ray job submit --working-dir . -- python jobs/predict.py --model OUT/model --pool POOL --out PRED \
        [--escalate LABEL_CONFIG --budget 0.2]

Same as `molal-ray predict`; under `ray job submit`, RAY_ADDRESS points Ray at the cluster. The
paths must be URIs or a mount every node sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the job runs from an uploaded copy of the repository: use
# that copy's molal_ray, not whichever one the node's environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molal_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
