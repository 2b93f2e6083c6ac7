"""The README's own-data example, run as written: its Python block makes the windows, its YAML block is
the sub-action file, and its distill.py command trains a few steps (tiny models) on them."""
import json
import re
import runpy
import shlex
from pathlib import Path

import distill
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
SMALL = [o for o in TINY if not o.startswith("data.synthetic") and o != "data.name=synthetic"]


def blocks(kind: str):
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_own_data_example_runs(tmp_path, monkeypatch, text_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "make.py").write_text(blocks("python")[0])
    runpy.run_path(str(tmp_path / "make.py"))
    (tmp_path / "my_subactions.yaml").write_text(blocks("yaml")[0])
    command = next(b for b in blocks("bash") if "text.file=my_subactions.yaml" in b)
    line = " ".join(l.split("#")[0].rstrip(" \\") for l in command.splitlines() if "distill.py" in l or "data.length" in l)
    args = shlex.split(line)[3:]                                  # after `accelerate launch distill.py`
    assert "data.name=npz" in args and "text.file=my_subactions.yaml" in args
    run_dir = tmp_path / "runs" / "mine"
    distill.main(["--config", str(ROOT / "configs/default.yaml"), *args, *SMALL, "train.mixup=0",
                  "train.cache_teacher=true", "train.teacher_ssl_epochs=1", f"text.cache_dir={text_cache}",
                  f"run_dir={run_dir}"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["class_names"] == ["walking", "sitting", "stairs"] and results["data"]["length"] == 320
    assert {"teacher", "student", "baseline"} <= set(results)
