"""An ensemble of CNN teachers (teacher.members > 1, teachers/ensemble.py): it teaches with the averaged
class probabilities of its members, each member learns from its own cross-entropy only, its declared
outputs are its real ones, it survives a checkpoint round trip, and a wrong config fails at load."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import distill
from conftest import TINY
from kd.config import CNNConfig, ConfigError, load_config
from kd.contract import teacher_outputs
from students.wrn import wrn16_1
from teachers.ensemble import Ensemble


def tiny_ensemble(k=3, channels=3, classes=4):
    torch.manual_seed(0)
    return Ensemble([wrn16_1(channels, classes, CNNConfig(wrn_stem_stride=2)) for _ in range(k)])


def test_logits_are_the_log_of_the_mean_member_probabilities():
    member_logits = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]], [[0.0, 0.0, 0.0]]])   # K=3, B=1, 3 classes
    e2 = torch.exp(torch.tensor(2.0))
    expected = torch.stack([e2 / (e2 + 2) + 1 / (e2 + 2) + 1 / 3,
                            1 / (e2 + 2) + e2 / (e2 + 2) + 1 / 3,
                            2 / (e2 + 2) + 1 / 3]) / 3
    p = Ensemble.combine(member_logits).exp()[0]
    assert torch.allclose(p, expected, atol=1e-6) and torch.isclose(p.sum(), torch.tensor(1.0))
    assert torch.allclose(F.softmax(Ensemble.combine(member_logits), -1), p.unsqueeze(0))   # logits = log-probs


def test_each_member_learns_from_its_own_cross_entropy_only():
    model = tiny_ensemble().train()
    x, y = torch.randn(6, 3, 64), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(1)
    out = model.fit_forward({"x": x, "y": y})
    loss = model.losses(out, y)["ce"]
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    k = len(model.members)
    own_ce = sum(F.cross_entropy(o.logits, y) for o in out.extra.values()) / k
    assert torch.isclose(loss, own_ce)                                   # not the CE of the averaged prediction
    assert not torch.isclose(loss, F.cross_entropy(out.logits, y))
    offset = 0
    for i, member in enumerate(model.members):
        params = list(member.parameters())
        alone = torch.autograd.grad(F.cross_entropy(out.extra[f"member{i}"].logits, y) / k, params,
                                    retain_graph=True)
        for g, a in zip(grads[offset:offset + len(params)], alone):
            assert torch.allclose(g, a, atol=1e-7)
        offset += len(params)


def test_members_start_from_different_initialisations():
    model = tiny_ensemble()
    convs = [[p for p in m.parameters() if p.dim() > 1] for m in model.members]    # (BatchNorm starts at 1, 0)
    for other in convs[1:]:
        assert all(not torch.equal(a, b) for a, b in zip(convs[0], other))


def test_declared_teach_outputs_are_the_real_ones(text_cache):
    cfg = load_config("configs/ensemble_wrn16_1.yaml", [*TINY, "data.name=synthetic", f"text.cache_dir={text_cache}"])
    from teachers import build_teacher
    teacher = build_teacher(cfg.teacher, 3, 6).eval()
    assert isinstance(teacher, Ensemble) and len(teacher.members) == 4
    with torch.no_grad():
        out = teacher.teach(torch.randn(2, 3, cfg.data.length))
    assert out.provided() == teacher_outputs(cfg.teacher)
    one = teacher.members[0]
    assert out.feature_tokens.shape[-1] == 4 * one.feature_dim
    assert out.features.shape[1:] == (4 * one.feature_dim, one.feature_length(cfg.data.length))


def test_an_ensemble_of_non_cnn_teachers_fails_at_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"teacher.members=2 builds an ensemble of CNN teachers; teacher.arch='vqshape'"):
        load_config("configs/default.yaml", ["teacher.members=2"])
    with pytest.raises(ConfigError, match=r"teacher.members=0 must be >= 1"):
        load_config("configs/ensemble_wrn16_1.yaml", ["teacher.members=0"])


def test_teacher_checkpoint_round_trip_and_member_scores(tmp_path, text_cache):
    from kd.data import build_splits
    from kd.stages import load_teacher
    run_dir = tmp_path / "ens"
    args = ["--config", "configs/ensemble_wrn16_1.yaml", *TINY, "data.name=synthetic", f"run_dir={run_dir}",
            f"text.cache_dir={text_cache}"]
    distill.main([*args, "stage=teacher"])
    report = json.loads((run_dir / "results.json").read_text())["teacher"]
    assert len(report["member_macro_f1"]) == 4 and all(0 <= f <= 1 for f in report["member_macro_f1"])
    cfg = load_config("configs/ensemble_wrn16_1.yaml", [*TINY, "data.name=synthetic", f"run_dir={run_dir}",
                                                        f"text.cache_dir={text_cache}"])
    splits = build_splits(cfg.data)
    teacher, _ = load_teacher(Path(run_dir) / "teacher", splits)
    assert isinstance(teacher, Ensemble)
    items = [splits.test[i] for i in range(len(splits.test))]
    x = torch.stack([torch.as_tensor(it["x"]) for it in items])
    y = torch.as_tensor([int(it["y"]) for it in items])
    with torch.no_grad():                     # the reloaded ensemble scores what the run reported
        acc = (teacher.predict(x).argmax(-1) == y).float().mean().item()
    assert acc == pytest.approx(report["accuracy"], abs=1e-6)
