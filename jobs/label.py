"""Job entrypoint: label a pool on the cluster.

    ray job submit --working-dir . -- python jobs/label.py CONFIG [--output DIR] [--overwrite]

Same as `molal-ray label`; under `ray job submit`, RAY_ADDRESS points Ray at the cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the job runs from an uploaded copy of the repository: use
# that copy's molal_ray, not whichever one the node's environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molal_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["label", *sys.argv[1:]])
