"""mGLW workspace and the distiller: normalisations, dynamic coefficients, alignment, and the
teacher staying frozen, in eval mode and out of the optimizer."""
import copy

import pytest
import torch
import torch.nn.functional as F

from kd.checks import validate_config
from kd.config import ConfigError, WorkspaceConfig, load_config
from kd.workspace import Workspace, dynamic_coefficients, slot_attention_maps


def test_slot_attention_normalises_over_slots_then_tokens():
    torch.manual_seed(0)
    k, q = torch.randn(2, 10, 8), torch.randn(2, 4, 8)
    assign, weights = slot_attention_maps(k, q)
    assert torch.allclose(assign.sum(-1), torch.ones(2, 10), atol=1e-6)          # softmax over slots
    assert torch.allclose(weights.sum(1), torch.ones(2, 4), atol=1e-6)           # re-normalised over tokens
    ref = F.softmax(k @ q.transpose(1, 2) / 8 ** 0.5, dim=-1)
    assert torch.allclose(assign, ref, atol=1e-6)


def test_dynamic_coefficients_on_known_distances():
    d = torch.tensor([1.0, 3.0], requires_grad=True)
    c = dynamic_coefficients(d)
    assert torch.allclose(c, torch.tensor([0.25, 0.75]))
    assert not c.requires_grad                                                   # sg[.]: no gradient through c
    assert torch.allclose(dynamic_coefficients(torch.tensor([2.0, 2.0, 4.0])), torch.tensor([0.25, 0.25, 0.5]))


def make_workspace():
    cfg = WorkspaceConfig(enabled=True, num_slots=3, iters=3, heads=2)
    return Workspace(cfg, [("shape", 12, 16), ("action", 5, 16)], width=8, length=20)


def test_workspace_paths_and_alignment_value():
    torch.manual_seed(0)
    ws = make_workspace()
    feats = torch.randn(2, 8, 20)
    src = {"shape": torch.randn(2, 12, 16), "action": torch.randn(2, 5, 16)}
    out, info = ws(feats, src)
    assert out.shape == feats.shape and info["kts"].shape == (2, 20, 3)
    assert set(info["kis"]) == {"shape", "action"} and info["kis"]["shape"].shape == (2, 20, 3)
    assert torch.allclose(info["kts"].sum(-1), torch.ones(2, 20), atol=1e-5)
    align, d = ws.alignment(info)
    manual = [F.mse_loss(info["kts"], info["kis"][n]) for n in ("shape", "action")]
    assert torch.allclose(d, torch.stack(manual)) and align.item() == pytest.approx(sum(m.item() for m in manual))
    prior_out, prior_info = ws(feats, None)                                      # inference: the slot prior only
    assert prior_info["kis"] == {} and prior_out.shape == feats.shape
    assert not torch.allclose(prior_out, out)


def test_alignment_trains_student_attention_and_slots():
    ws = make_workspace()
    _, info = ws(torch.randn(2, 8, 20), {"shape": torch.randn(2, 12, 16), "action": torch.randn(2, 5, 16)})
    ws.alignment(info)[0].backward()
    for name in ("read.qkv.weight", "to_q.weight", "gru.weight_ih", "project.shape.width.weight"):
        assert dict(ws.named_parameters())[name].grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- distiller with a real teacher
@pytest.fixture(scope="module")
def tiny_pair():
    from kd.data import build_splits
    from kd.pipeline import text_tensors
    from kd.stages import build_distiller
    from teachers import build_teacher
    cfg = load_config("configs/synthetic_smoke.yaml", ["text.cache_dir=.cache/text"])
    splits = build_splits(cfg.data)
    text, _ = text_tensors(cfg, splits)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, splits.num_channels, len(splits.class_names), text)
    teacher.eval().requires_grad_(False)
    distiller = build_distiller(cfg, splits, teacher)
    return cfg, splits, teacher, distiller


def batch_of(ds, n=8):
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "y")}


def test_teacher_never_reaches_the_optimizer_nor_changes(tiny_pair):
    cfg, splits, teacher, distiller = tiny_pair
    before = copy.deepcopy(teacher.state_dict())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in distiller.parameters()}
    opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-2)
    distiller.train()
    for _ in range(3):
        b = batch_of(splits.train)
        with torch.no_grad():
            t_out = teacher.teach(b["x"], b["y"])
        terms, logs = distiller(b, t_out)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert {"ce", "logit_kd", "attr", "code_kl", "action_kl"} <= set(terms)
    assert {"coef_shape", "coef_action"} <= set(logs)


def test_dynamic_coefficients_weight_the_source_terms(tiny_pair):
    from omegaconf import OmegaConf
    from kd.stages import build_distiller
    cfg, splits, teacher, _ = tiny_pair
    cfg = copy.deepcopy(cfg)          # the module's config is shared by every test here: change a copy
    OmegaConf.update(cfg, "kd.workspace.prior_prob", 0.0)
    torch.manual_seed(0)
    distiller = build_distiller(cfg, splits, teacher)
    distiller.train()
    b = batch_of(splits.train)
    with torch.no_grad():
        t_out = teacher.teach(b["x"], b["y"])
    torch.manual_seed(3)
    terms, logs = distiller(b, t_out)
    d = torch.tensor([logs["dist_shape"], logs["dist_action"]])
    c = d / d.sum()
    assert logs["coef_shape"] == pytest.approx(c[0].item(), rel=1e-5)
    assert logs["coef_shape"] + logs["coef_action"] == pytest.approx(1.0)
    alpha = cfg.kd.alpha
    raw = distiller.losses["action_kl"](distiller.student_forward(b["x"], None)[0], t_out)["action_kl"]
    assert "align" in terms and terms["align"].item() == pytest.approx(d.sum().item(), rel=1e-4)
    assert terms["action_kl"].item() == pytest.approx(alpha * logs["coef_action"] * raw.item(), rel=1e-3)


def test_pairing_errors_say_what_differs(tiny_pair):
    cfg, splits, teacher, _ = tiny_pair
    from kd.stages import build_distiller
    bad = copy.deepcopy(cfg)
    bad.student.arch = "vqshape_student"
    bad.student.vqshape.num_token = 8
    bad.student.vqshape.num_code = 64
    with pytest.raises(ValueError, match=r"num_token=8 vs teacher 16"):
        build_distiller(bad, splits, teacher)
    bad = copy.deepcopy(cfg)
    bad.kd.logit_kd.source = "nope"
    with pytest.raises(ConfigError, match="kd.logit_kd.source='nope' is not one of"):   # caught at config load
        validate_config(bad)


def test_no_teacher_baseline_is_plain_cross_entropy(tiny_pair):
    cfg, splits, _, _ = tiny_pair
    from kd.distiller import OwnLossTask
    from kd.stages import new_student
    base = OwnLossTask(new_student(cfg, splits))
    batch = batch_of(splits.train)
    terms, logs = base(batch, None)
    assert set(terms) == {"ce"} and logs == {}
    expected = torch.nn.functional.cross_entropy(base.model(batch["x"]).logits, batch["y"])
    assert torch.allclose(terms["ce"], expected)


def test_a_loss_bound_to_an_extra_teachers_source_reads_that_teacher(tiny_pair):
    """kd.logit_kd.source names the source of a second teacher (a WRN-16-3): the term is the logit KD
    against that teacher's logits, weighted by that source's coefficient, not the main teacher's."""
    from omegaconf import OmegaConf
    from kd.distiller import TeacherGroup
    from kd.losses import logit_kd_loss
    from kd.stages import build_distiller
    from students import build_student
    cfg, splits, teacher, _ = tiny_pair
    cfg = copy.deepcopy(cfg)
    from kd.config import SourceConfig
    cfg.kd.sources.append(SourceConfig(name="wrn", tokens="wrn/feature_tokens"))
    OmegaConf.update(cfg, "kd.logit_kd.source", "wrn")
    OmegaConf.update(cfg, "kd.workspace.prior_prob", 0.0)
    torch.manual_seed(1)
    wrn = build_student("wrn16_3", cfg.teacher.cnn, None, splits.num_channels, len(splits.class_names)).eval()
    group = TeacherGroup(teacher, {"wrn": wrn.requires_grad_(False)})
    distiller = build_distiller(cfg, splits, teacher, group).train()
    b = batch_of(splits.train)
    with torch.no_grad():
        t_out = group.teach(b["x"], b["y"])
    assert torch.equal(t_out.get("wrn/logits"), wrn(b["x"]).logits) and "wrn/logits" in t_out.provided()
    torch.manual_seed(3)
    terms, logs = distiller(b, t_out)
    torch.manual_seed(3)
    s_out, _ = distiller.student_forward(b["x"], distiller.sources_for_step(t_out))
    T, alpha = cfg.kd.logit_kd.temperature, cfg.kd.alpha
    own = logit_kd_loss(s_out.logits, t_out.extra["wrn"].logits, T).item()
    main = logit_kd_loss(s_out.logits, t_out.logits, T).item()
    assert abs(own - main) > 1e-3                                          # the two teachers disagree
    assert terms["logit_kd"].item() == pytest.approx(alpha * logs["coef_wrn"] * own, rel=1e-4)
