"""Job entrypoint: label a pool on the cluster.

    ray job submit --working-dir . -- python jobs/label.py CONFIG [--output DIR] [--overwrite]

Same as `molal-ray label`; under `ray job submit`, RAY_ADDRESS points Ray at the cluster.
"""

from __future__ import annotations

import sys

from molal_ray.cli import main

if __name__ == "__main__":
    main(["label", *sys.argv[1:]])
