"""Signal-only inference with an exported student: no teacher, no text.

    python -m kd.predict --model runs/default/student --npz windows.npz [--layout NTC]
    python -m kd.predict --model RUN/student --npz windows.npz --timeline timeline.json [--plot DIR]

Windows are resampled to the student's length; with `y` in the file, accuracy and macro-F1
are printed too. `--timeline`: a student distilled from an ordered-alignment teacher's sub-action scores
(kd.sub_kl) also says which sub-action each stretch of a window is, as segments of the window's own samples
with their sentences: label-free (the head's best entry over the whole vocabulary) and given the predicted
class (the best path through that class's ordered sub-actions); `--plot DIR` draws each window's signal
under both (one PNG per window).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from kd.checkpoint import CheckpointError, load_weights, read_checkpoint
from kd.config import config_from_dict
from kd.data import resample
from kd.metrics import classification_report
from kd.recovery import Transcripts, step_predictions
from kd.workspace import Workspace
from students import build_student
from students.adapter import SubActionHead
from students.fused import FUSABLE, FusedCNN
from teachers.alignment import time_bins


class Predictor(nn.Module):
    """An exported student (+ its workspace read-out with the learned slot prior).

    fused: run the inference form (students/fused.py: BatchNorm folded, channels-last convs,
    the read-out's constants precomputed; equal to the eager model within float rounding).
    None = fused for CNN students, eager for the VQShape student (which has no fused form).
    """

    def __init__(self, path: Union[str, Path], fused: Optional[bool] = None):
        super().__init__()
        state, meta = read_checkpoint(path)
        if meta.get("role") not in ("student", "baseline"):
            raise CheckpointError(f"{path} is a {meta.get('role')!r} checkpoint; give an exported student "
                                  f"(<run_dir>/student or <run_dir>/baseline)")
        cfg = config_from_dict(meta["config"])
        self.meta, self.class_names = meta, list(meta["class_names"])
        self.num_channels, self.length = meta["num_channels"], meta["length"]
        self.model = nn.ModuleDict({"student": build_student(
            meta["arch"], cfg.student.cnn, cfg.student.vqshape, self.num_channels, len(self.class_names),
            meta["num_actions"], freeze_shared=meta["role"] == "student")})
        if "workspace" not in meta:
            raise CheckpointError(f"{path} was exported before meta.json held the workspace's constructor "
                                  f"arguments: re-export it with commit 114434b "
                                  f"(python -m kd.predict --upgrade {path}) or retrain it")
        if meta["workspace"]:
            self.model["workspace"] = Workspace(cfg.kd.workspace, **meta["workspace"])
        self.vocab_texts = None
        if meta.get("timeline"):   # the sub-action read-out (kd.stages.timeline_parts)
            tl = meta["timeline"]
            self.model["adapter"] = self.model["student"].token_adapter(**tl["adapter"])
            self.model["sub_head"] = SubActionHead(self.model["adapter"].dim, tl["sub_head"]["num_actions"],
                                                   self.num_channels, tl["sub_head"]["context"])
            shape = tl["transcripts"]["shape"]
            self.model["transcripts"] = Transcripts(torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.bool),
                                                    **{k: v for k, v in tl["transcripts"].items() if k != "shape"})
            self.vocab_texts = list(tl["vocab_texts"])
        load_weights(self.model, state, str(path))
        self.eval()
        cnn = isinstance(self.model["student"], FUSABLE)
        if fused and not cnn:
            raise ValueError(f"fused=True: the {meta['arch']!r} student has no fused form (use fused=None or False)")
        self.fused = None
        if cnn and fused is not False:
            readout = self.model["workspace"].prior_readout() if "workspace" in self.model else None
            self.fused = FusedCNN(self.model["student"], readout)

    def prepare(self, x: Union[np.ndarray, torch.Tensor], layout: str = "NCT") -> torch.Tensor:
        """Array [N, C, T] (or [N, T, C] with layout='NTC') -> float32 [N, C, length]."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        if x.dim() != 3:
            raise ValueError(f"windows must be a 3-D array [N, C, T] or [N, T, C], got shape {list(x.shape)}")
        if layout == "NTC":
            x = x.transpose(1, 2)
        if x.shape[1] != self.num_channels:
            raise ValueError(f"windows have {x.shape[1]} channels, the student expects {self.num_channels} "
                             f"(check --layout)")
        return resample(x, self.length)

    def readout_mix(self):
        """The workspace read-out as the eager student applies it (its learned prior, no teacher), or None."""
        ws = self.model["workspace"] if "workspace" in self.model else None
        return (lambda f: ws(f, None)[0]) if ws is not None else None

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        if self.fused is not None:
            return torch.cat([self.fused(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        mix = self.readout_mix()
        return torch.cat([self.model["student"](x[i:i + batch_size], mix=mix).logits
                          for i in range(0, len(x), batch_size)])

    def predict(self, x, layout: str = "NCT") -> List[str]:
        return [self.class_names[i] for i in self.logits(self.prepare(x, layout)).argmax(-1).tolist()]

    @torch.no_grad()
    def timeline(self, x: torch.Tensor, batch_size: int = 256) -> Dict[str, torch.Tensor]:
        """Prepared windows (N, C, length) -> `label_free` and `given_class` (N, length) vocabulary ids of every
        time step and `class` (N,), the predicted class the second decoding is given. Label-free, a step takes
        the best entry of the token whose span covers it (nearest centre first, kd.recovery.step_predictions);
        given the class, the state of its time bin on the decoded path (Transcripts.decode), so the timeline
        runs through the class's sub-actions in order."""
        if self.vocab_texts is None:
            raise ValueError("this student has no sub-action read-out: only a student distilled with kd.sub_kl from "
                             "an ordered-alignment teacher tells a timeline (its meta.json has no 'timeline')")
        mix = self.readout_mix()
        rows = {"class": [], "label_free": [], "given_class": []}
        for i in range(0, len(x), batch_size):
            out = self.model["student"](x[i:i + batch_size], mix=mix)
            attr = self.model["adapter"](out.features)
            scores = self.model["sub_head"](attr["tokens"])                          # (B, G, M)
            y = out.logits.argmax(-1)
            t, l = attr["t"], attr["l"]
            rows["class"].append(y)
            rows["label_free"].append(step_predictions(scores.argmax(-1), t, l, x.shape[-1]))
            path = self.model["transcripts"].decode(t, l, scores, y, per_bin=True)        # (B, n_bins)
            step_bin = time_bins(torch.arange(x.shape[-1]) / max(x.shape[-1] - 1, 1), path.shape[1])
            rows["given_class"].append(path[:, step_bin])
        return {k: torch.cat(v) for k, v in rows.items()}


def segments(steps: List[int], samples: int) -> List[List[int]]:
    """Per-step ids of a window resampled to len(steps) -> [[first, last, id], ...] runs of one id over the
    window's own samples, each sample taking the id of its nearest step (resample's positions)."""
    L = len(steps)
    per_sample = np.asarray(steps)[np.rint(np.arange(samples) * (L - 1) / max(samples - 1, 1)).astype(int)]
    cuts = np.flatnonzero(np.diff(per_sample)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, samples] - 1
    return [[int(a), int(b), int(per_sample[a])] for a, b in zip(starts, ends)]


def timeline_json(predictor: "Predictor", tl: Dict[str, torch.Tensor], samples: int) -> Dict:
    """Every window's predicted class and both decodings as segments naming sentences by vocabulary id."""
    windows = [{"class": predictor.class_names[int(c)],
                "label_free": segments(lf.tolist(), samples), "given_class": segments(gc.tolist(), samples)}
               for c, lf, gc in zip(tl["class"], tl["label_free"], tl["given_class"])]
    return {"vocabulary": predictor.vocab_texts, "samples_per_window": samples,
            "segments": "[first sample, last sample (inclusive), vocabulary id]", "windows": windows}


def plot_timelines(raw: np.ndarray, report: Dict, out_dir: Union[str, Path], limit: int = 50) -> List[Path]:
    """One PNG per window (the first `limit`): its channels over its samples, the given-class decoding as
    coloured bands behind them and the label-free one as a strip below, a legend naming the sentences shown."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = plt.get_cmap("tab20").colors
    paths = []
    for i, w in enumerate(report["windows"][:limit]):
        fig, (ax, strip) = plt.subplots(2, 1, figsize=(10, 4), sharex=True, gridspec_kw={"height_ratios": [5, 1]})
        for c in range(raw.shape[1]):
            ax.plot(raw[i, c], lw=0.8, color="k", alpha=0.3 + 0.7 * c / max(raw.shape[1] - 1, 1))
        shown = {}
        for axis, key in ((ax, "given_class"), (strip, "label_free")):
            for first, last, v in w[key]:
                axis.axvspan(first, last + 1, color=colours[v % 20], alpha=0.35 if axis is ax else 0.9, lw=0)
                shown[v] = report["vocabulary"][v]
        ax.set_title(f"window {i}: predicted {w['class']} (bands: decoded given the class; strip: label-free)",
                     fontsize=9)
        strip.set_yticks([])
        strip.set_xlabel("sample")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[v % 20]) for v in shown]
        fig.legend(handles, [f"{v}: {t[:70]}" for v, t in shown.items()], loc="lower center", fontsize=6,
                   ncol=1, bbox_to_anchor=(0.5, -0.02 - 0.04 * len(shown)))
        path = out_dir / f"window_{i:04d}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="exported student directory")
    p.add_argument("--npz", help="file with X (and optionally y)")
    p.add_argument("--layout", default="NTC", choices=["NTC", "NCT"])
    p.add_argument("--eager", action="store_true", help="run the eager modules, not the fused inference form")
    p.add_argument("--timeline", help="write every window's sub-action timeline to this JSON file")
    p.add_argument("--plot", help="with --timeline: draw each window's timeline over its signal into this folder")
    args = p.parse_args(argv)
    if args.plot and not args.timeline:
        p.error("--plot draws the timeline: give --timeline too")
    if not args.model or not args.npz:
        p.error("--model and --npz are required")
    if not Path(args.npz).is_file():
        raise FileNotFoundError(f"--npz {args.npz!r} does not exist")
    data = np.load(args.npz, allow_pickle=False)
    predictor = Predictor(args.model, fused=False if args.eager else None)
    logits = predictor.logits(predictor.prepare(data["X"], args.layout))
    pred = logits.argmax(-1).numpy()
    out = {"predictions": [predictor.class_names[i] for i in pred]}
    if "y" in data:
        rep = classification_report(data["y"], pred, predictor.class_names)
        out.update(accuracy=rep["accuracy"], macro_f1=rep["macro_f1"])
    if args.timeline:
        raw = np.asarray(data["X"], dtype=np.float32)
        raw = raw.transpose(0, 2, 1) if args.layout == "NTC" else raw
        report = timeline_json(predictor, predictor.timeline(predictor.prepare(raw, "NCT")), raw.shape[-1])
        Path(args.timeline).write_text(json.dumps(report, indent=1) + "\n")
        out["timeline"] = args.timeline
        if args.plot:
            out["plots"] = [str(q) for q in plot_timelines(raw, report, args.plot)]
    form = "fused" if predictor.fused is not None else "eager"
    print(json.dumps({k: v for k, v in out.items() if k not in ("predictions", "plots")} | {"n": len(pred), "form": form}
                     | ({"plots": f"{len(out['plots'])} PNG in {args.plot}"} if args.plot else {})))
    return out


if __name__ == "__main__":
    main()
