"""What the report scripts share: the command line of the per-run ones (a report function over finished run
directories, printed as JSON and optionally written to a file), and the finished runs of a study's method."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


def main_over_runs(doc: str, report: Callable[[Path], Dict], argv: Optional[Sequence[str]] = None) -> List[Dict]:
    """`python -m experiments.<script> RUN_DIR [RUN_DIR ...] [--out FILE]`: report(run_dir) for each, one
    thread, torch seed 0."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--out", help="also write the reports (a JSON list) to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = [report(Path(r)) for r in args.run_dirs]
    print(json.dumps(rows, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def finished_runs(method_dir: Path) -> List[Path]:
    """The finished (fold, seed) run directories of one method of a `kd.cv` study (`fold<k>_s<seed>/` holding
    results.json), in name order."""
    return [r.parent for r in sorted(Path(method_dir).glob("fold*_s*/results.json"))]
