"""Teacher -> student knowledge distillation for wearable activity recognition.

    accelerate launch distill.py [--config FILE] [key=value ...]

With no arguments: the default pairing (the schema's defaults, named by configs/default.yaml) on
seglearn's bundled smartwatch data, end to end; `--print-config` prints every value instead. Outputs go to `run_dir` (see README.md).
"""
from __future__ import annotations

import argparse
import json
import sys

from kd.config import load_config, to_yaml

DEFAULT_CONFIG = "configs/default.yaml"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"pairing YAML (default {DEFAULT_CONFIG})")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. train.epochs=3)")
    return parser.parse_args(argv)


def health_summary(health: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in health.items() if k != "collapse_reasons"}


def main(argv=None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return {}
    from accelerate import PartialState
    from kd.pipeline import end_processes, run   # heavy imports after the config is known to be valid
    results = run(cfg)
    if PartialState().is_main_process:
        # parameters at inference: a student's deployed count (no adapter, workspace prior read-out only)
        summary = {k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"],
                       "params_inference": v.get("params_inference", v["params"])}
                   for k, v in results.items() if isinstance(v, dict) and "accuracy" in v}
        if "student" in summary and "baseline" in summary:
            summary["student_minus_alone"] = {m: round(summary["student"][m] - summary["baseline"][m], 4)
                                              for m in ("accuracy", "macro_f1")}
        health = results.get("teacher", {}).get("health")
        print(json.dumps({"run_dir": cfg.run_dir, "test": summary, "wall_s": round(results["wall_s"], 1),
                          "peak_rss_mb": round(results["peak_rss_mb"]),
                          "cpu_threads_per_process": results["cpu_threads_per_process"],
                          **({"teacher_health": health_summary(health)} if health else {})}, indent=2))
        if health and health["collapsed"]:
            print("!!! WARNING: the teacher's tokens have COLLAPSED (" + "; ".join(health["collapse_reasons"])
                  + "). See teacher/shapes.png and teacher/token_windows.png. !!!")
        alignment = results.get("teacher", {}).get("alignment")
        if alignment and alignment["collapsed"]:
            print(f"!!! WARNING: the teacher's sub-action alignment has COLLAPSED: "
                  f"{alignment['one_state_windows']:.0%} of held-out windows are one sub-action from start to end and "
                  f"{alignment['dominant_state_share']:.0%} of a window's tokens are on its commonest one, "
                  f"so the sub-action targets a student gets carry no order. See teacher/subaction_windows.png. !!!")
    end_processes()
    return results


if __name__ == "__main__":
    main()
