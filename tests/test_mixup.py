"""train.mixup: a mixed batch is a convex pair of windows, the own losses become the mixup cross-entropy,
the teacher is asked about the mixed windows (so no cache, no label-reading teacher: refused at load)."""
import json

import pytest
import torch
import torch.nn.functional as F

import distill
from conftest import TINY
from kd.config import ConfigError, load_config
from kd.distiller import own_losses
from kd.engine import mix_batch
from kd.outputs import Outputs


class CE(torch.nn.Module):
    def losses(self, out, y):
        return {"ce": F.cross_entropy(out.logits, y), "unlabelled": out.logits.square().mean()}


def test_a_mixed_batch_is_a_convex_pair_of_its_windows():
    torch.manual_seed(3)
    x = torch.eye(6).unsqueeze(1) * 10.0                                 # window i is 10 * e_i: pairs readable
    y = torch.arange(6)
    mixed = mix_batch({"x": x, "y": y, "index": y}, 1.0)
    y_b, lam = mixed["mix"]
    assert 0.0 < lam < 1.0 and torch.equal(mixed["y"], y) and torch.equal(mixed["index"], y)
    rows = mixed["x"][:, 0] / 10.0
    for i in range(6):
        partner = int(y_b[i])
        expected = lam * F.one_hot(torch.tensor(i), 6) + (1 - lam) * F.one_hot(torch.tensor(partner), 6)
        assert torch.allclose(rows[i], expected.float(), atol=1e-6)
    assert sorted(y_b.tolist()) == list(range(6))                        # a permutation of the batch


def test_mixed_losses_are_the_cross_entropy_against_the_mixed_labels():
    logits = torch.randn(5, 4)
    y, y_b, lam = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 3, 1, 0, 2]), 0.3
    got = own_losses(CE(), Outputs(logits=logits), {"y": y, "mix": (y_b, lam)})
    soft = lam * F.one_hot(y, 4) + (1 - lam) * F.one_hot(y_b, 4)
    assert torch.isclose(got["ce"], F.cross_entropy(logits, soft.float()))
    assert torch.isclose(got["unlabelled"], logits.square().mean())      # a term without labels is unchanged
    plain = own_losses(CE(), Outputs(logits=logits), {"y": y})
    assert torch.isclose(plain["ce"], F.cross_entropy(logits, y))


def test_mixup_mistakes_fail_at_load_naming_the_fix():
    with pytest.raises(ConfigError, match="set train.cache_teacher=false"):
        load_config("configs/ensemble_wrn16_1.yaml", ["train.mixup=1.0"])
    with pytest.raises(ConfigError, match="set teacher.fusion.teach_keys=vocab"):
        load_config("configs/default.yaml", ["train.mixup=1.0", "train.cache_teacher=false"])
    load_config("configs/default.yaml", ["train.mixup=1.0", "train.cache_teacher=false",
                                         "teacher.fusion.teach_keys=vocab"])   # teaches without the label
    with pytest.raises(ConfigError, match="train.mixup=-0.5 must be >= 0"):
        load_config("configs/baseline_wrn16_1.yaml", ["train.mixup=-0.5"])
    load_config("configs/baseline_wrn16_1.yaml", ["train.mixup=1.0"])    # no teacher: nothing to cache
    load_config("configs/ensemble_wrn16_1.yaml", ["train.mixup=1.0", "stage=teacher"])   # teacher stage: unmixed


def test_a_student_learns_from_a_live_teacher_on_mixed_windows(tmp_path, text_cache):
    run_dir = tmp_path / "mix"
    distill.main(["--config", "configs/ensemble_wrn16_1.yaml", *TINY, f"run_dir={run_dir}",
                  f"text.cache_dir={text_cache}", "train.mixup=0.4", "train.cache_teacher=false",
                  "teacher.members=2"])
    results = json.loads((run_dir / "results.json").read_text())
    assert {"teacher", "student", "baseline"} <= set(results)
    assert results["student"]["train"]["steps"] == 2
