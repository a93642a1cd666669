"""Job entrypoint: run the active-learning loop on the cluster.

    ray job submit --working-dir . -- python jobs/run.py CONFIG [--resume] [--strategy S] [--annotation A]

Same as `molal-ray run`; under `ray job submit`, RAY_ADDRESS points Ray at the cluster.
"""

from __future__ import annotations

import sys

from molal_ray.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
