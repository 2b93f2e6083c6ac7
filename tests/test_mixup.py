"""train.mixup and train.augment: a mixed batch is a convex pair of windows, the own losses become the
mixup cross-entropy; an augmented window is the original under a gain, noise or a circular shift, with its
label; the teacher is asked about the changed windows (so no cache, no label-reading teacher under mixup:
refused at load)."""
import json

import pytest
import torch
import torch.nn.functional as F

import distill
from conftest import TINY
from kd.config import ConfigError, load_config
from kd.distiller import own_losses
from kd.engine import augment_batch, mix_batch
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
        load_config("configs/default.yaml", ["train.mixup=1.0", "train.cache_teacher=false",
                                             "teacher.fusion.teach_keys=class"])
    load_config("configs/default.yaml", ["train.mixup=1.0", "train.cache_teacher=false"])   # teaches without the label
    with pytest.raises(ConfigError, match="train.mixup=-0.5 must be >= 0"):
        load_config("configs/baseline_wrn16_1.yaml", ["train.mixup=-0.5"])
    load_config("configs/baseline_wrn16_1.yaml", ["train.mixup=1.0"])    # no teacher: nothing to cache
    load_config("configs/ensemble_wrn16_1.yaml", ["train.mixup=1.0", "stage=teacher"])   # teacher stage: unmixed


def test_a_student_learns_from_a_live_teacher_on_mixed_windows(tmp_path, text_cache, monkeypatch):
    import kd.engine
    asked, live = [], kd.engine.teacher_outputs

    def recording(teacher, batch):                     # what the student stage shows its teacher
        if teacher is not None:
            asked.append("mix" in batch)
        return live(teacher, batch)

    monkeypatch.setattr(kd.engine, "teacher_outputs", recording)
    run_dir = tmp_path / "mix"
    distill.main(["--config", "configs/ensemble_wrn16_1.yaml", *TINY, f"run_dir={run_dir}",
                  f"text.cache_dir={text_cache}", "train.mixup=0.4", "train.cache_teacher=false",
                  "teacher.members=2"])
    results = json.loads((run_dir / "results.json").read_text())
    assert {"teacher", "student", "baseline"} <= set(results)
    assert results["student"]["train"]["steps"] == 2
    assert asked == [True, True]   # the teacher saw the mixed windows, live


def windows(B=4, C=3, T=200):
    torch.manual_seed(0)
    return {"x": torch.randn(B, C, T) + torch.linspace(0, 3, T), "y": torch.arange(B)}


def test_augmentation_gain_is_one_factor_per_window_and_channel():
    b = windows()
    torch.manual_seed(1)
    out = augment_batch(b, scale=0.2)
    ratio = out["x"] / b["x"]
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5)      # constant in time
    assert ratio[..., 0].std() > 0.05 and torch.equal(out["y"], b["y"])


def test_augmentation_noise_has_the_asked_size_relative_to_each_channel():
    b = windows(T=20000)
    b["x"][:, 1] *= 10.0                                                          # one loud channel
    torch.manual_seed(2)
    noise = augment_batch(b, jitter=0.1)["x"] - b["x"]
    ratio = noise.std(-1) / b["x"].std(-1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.1), rtol=0.05)


def test_augmentation_shift_is_a_circular_roll_within_the_limit():
    b = windows(T=50)
    torch.manual_seed(3)
    out = augment_batch(b, shift=0.1)["x"]
    for i in range(4):
        rolls = [s for s in range(-5, 6) if torch.equal(out[i], torch.roll(b["x"][i], s, dims=-1))]
        assert len(rolls) == 1                                                    # found by brute force
    assert torch.equal(augment_batch(b)["x"], b["x"])                            # all off: unchanged


def test_augmentation_needs_a_live_teacher_and_sane_values():
    with pytest.raises(ConfigError, match="train.augment changes every training window"):
        load_config("configs/ensemble_wrn16_1.yaml", ["train.augment.scale=0.1"])
    with pytest.raises(ConfigError, match=r"train.augment.jitter=-0.1 must be >= 0"):
        load_config("configs/baseline_wrn16_1.yaml", ["train.augment.jitter=-0.1"])
    with pytest.raises(ConfigError, match=r"train.augment.shift=0.7 must lie in \[0, 0.5\]"):
        load_config("configs/baseline_wrn16_1.yaml", ["train.augment.shift=0.7"])
    # labels stay: a text-guided teacher may teach with the class text on augmented windows
    load_config("configs/default.yaml", ["train.augment.scale=0.1", "train.cache_teacher=false"])
