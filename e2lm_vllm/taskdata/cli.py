"""``python -m e2lm_vllm.taskdata samples|full``: write the bundled samples, or build the full suite.

    python -m e2lm_vllm.taskdata samples            # regenerates e2lm_vllm/taskdata/samples (committed)
    python -m e2lm_vllm.taskdata full [-o DIR]      # prints the include path of the full suite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e2lm_vllm.taskdata.cache import include_path_for
from e2lm_vllm.taskdata.readers import TaskDataError, data_root
from e2lm_vllm.taskdata.suites import SAMPLES_DIR, build_full_suite, build_samples_suite, write_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2lm_vllm.taskdata", description="Real evaluation data -> normalised JSONL + lm-eval task folders."
    )
    parser.add_argument("suite", choices=["samples", "full"])
    parser.add_argument("-o", "--out", type=Path, help="output folder (samples: e2lm_vllm/taskdata/samples; full: the cache)")
    parser.add_argument("--data", help="raw data folder (default: $E2LM_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    try:
        root = data_root(args.data)
        if args.suite == "samples":
            out = args.out or SAMPLES_DIR
            suite = build_samples_suite(root)
            written = write_suite(suite, out)
            total = sum(suite.request_counts.values())
            print(f"wrote {len(written)} files to {out} ({total} zero-shot requests in all)")
        elif args.out:
            write_suite(build_full_suite(root, str(args.out.resolve() / "data")), args.out)
            print(args.out)
        else:
            print(include_path_for("full", args.data))
    except TaskDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
