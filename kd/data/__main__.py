"""`python -m kd.data info --dataset NAME [key=value ...]`: print the JSON summary of a data set's splits.

Overrides are `data` config keys, e.g. `synthetic.num_windows=1000` or `test_subjects=[1,2]`.
"""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

from kd.config import load_config

from . import DATASETS, build_splits


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kd.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the JSON summary of the splits")
    info.add_argument("--dataset", default="watch", choices=sorted(DATASETS))
    info.add_argument("overrides", nargs="*", help="data config keys, key=value (without the `data.` prefix)")
    args = parser.parse_args(argv)
    cfg = load_config(overrides=[f"data.name={args.dataset}"] + [f"data.{o}" for o in args.overrides])
    print(json.dumps(build_splits(cfg.data).info(), indent=2))


if __name__ == "__main__":
    main()
