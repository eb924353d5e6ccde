"""Entry point for a Ray cluster: the same flags as `e2lm-vllm sweep`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/sweep.py --config ray_jobs/examples/ladder.yaml --output /abs/results/ladder

With token auth (Ray's default once ~/.ray/auth_token exists), export RAY_AUTH_MODE=token first
(and RAY_AUTH_TOKEN=<the head's token> for a remote head): `ray job submit` sends no token otherwise.
`python` is the one on the head node's PATH (start the head from the project's venv, e.g.
`PATH=$PWD/.venv/bin:$PATH ray start --head`). `--working-dir .` uploads the checkout minus
what .gitignore lists (.venv, caches, results). Paths to checkpoints and the output folder must
be absolute: the job runs in a temporary copy of the checkout. Add `--watch --stop-file /abs/STOP`
to follow a run while it trains (ray_jobs/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run the uploaded copy of the package, not whatever version is installed on the node.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2lm_vllm.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
