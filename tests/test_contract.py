"""The model contract (kd/contract.py): what each model declares it gives distillation is what it
really gives, and a pairing that asks for something missing fails at config load, naming the fix."""
import pytest
import torch

from conftest import TINY
from kd.config import ConfigError, load_config
from kd.contract import check_outputs, student_outputs, teacher_outputs
from kd.outputs import FIELDS, TOKEN_OUTPUTS
from kd.losses import LOSSES

# every output key a KD loss can ask of either side, or a knowledge source of the teacher
LOSS_KEYS = {k for loss in LOSSES.values() for k in loss.requires}
TEACHER_KEYS = LOSS_KEYS | set(TOKEN_OUTPUTS)

PAIRINGS = [("vqshape", True, "wrn16_1"), ("vqshape", True, "vqshape_student"), ("vqshape", False, "resnet"),
            ("vqshape", False, "vqshape_student"), ("wrn16_3", False, "wrn16_1"), ("resnet", False, "wrn16_1")]


def pairing_config(t_arch, text, s_arch, text_cache, extra=()):
    """The smoke pairing with every loss both declared sides allow switched on."""
    base = [*TINY, f"text.cache_dir={text_cache}", f"teacher.arch={t_arch}", f"teacher.text_guidance={text}",
            f"student.arch={s_arch}", "kd.workspace.enabled=false", "kd.coef=fixed", "kd.sources=[{name: a}]",
            *(["train.teacher_ssl_epochs=0"] if t_arch != "vqshape" else []), *extra]
    off = [f"kd.{n}.weight=0" for n in LOSSES]
    cfg = load_config("configs/synthetic_smoke.yaml", [*base, *off])
    t_keys = teacher_outputs(cfg.teacher)
    s_keys = student_outputs(s_arch, t_keys)
    on = [f"kd.{n}.weight=1.0" for n, loss in LOSSES.items() if set(loss.requires) <= (t_keys & s_keys)]
    for n in LOSSES:
        on.append(f"kd.{n}.source=a")
    return load_config("configs/synthetic_smoke.yaml", [*base, *off, *on]), t_keys, s_keys


ORDERED = ["teacher.alignment.target=ordered"]


@pytest.mark.parametrize("t_arch,text,s_arch,extra", [(*p, ()) for p in PAIRINGS] + [
    ("vqshape", True, "wrn16_1", ORDERED), ("vqshape", True, "vqshape_student", ORDERED)])
def test_declared_outputs_are_the_real_ones(t_arch, text, s_arch, extra, text_cache):
    from kd.data import build_splits
    from kd.pipeline import text_tensors
    from kd.stages import build_distiller, sample_batch
    from teachers import build_teacher
    cfg, t_keys, s_keys = pairing_config(t_arch, text, s_arch, text_cache, extra)
    assert ("sub_logits" in t_keys) == bool(extra)                     # ordered alignment: label-free scores
    assert ("sub_logits" in s_keys) == (bool(extra) and s_arch == "wrn16_1")   # a head on the adapter tokens
    splits = build_splits(cfg.data)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, splits.num_channels, len(splits.class_names), text_tensors(cfg, splits)[0])
    teacher.eval().requires_grad_(False)
    batch = sample_batch(splits.train)
    with torch.no_grad():
        t_real = teacher.teach(batch["x"], batch["y"]).provided()
        distiller = build_distiller(cfg, splits, teacher).eval()
        s_real = distiller.student_forward(batch["x"], None)[0].provided()
    assert set(t_keys) | set(s_keys) <= set(FIELDS)                       # every declared key is an Outputs field
    assert t_real == t_keys
    # the student reaches attr / code_dist through the adapter only when a token loss is on: here one is
    assert s_real == s_keys
    assert len(distiller.losses) >= 2                                   # logit_kd and the feature losses at least


def test_pairing_mistakes_fail_at_config_load_naming_the_fix(text_cache):
    with pytest.raises(ConfigError, match=r"kd.sources\[1\] \('action'\) reads teacher output 'action_tokens', "
                                          r"which teacher.arch=vqshape with text_guidance=false does not produce"):
        load_config("configs/default.yaml", ["teacher.text_guidance=false", "kd.action_kl.weight=0"])
    with pytest.raises(ConfigError, match=r"kd.action_kl needs 'action_logits' from the teacher \(teacher.arch=vqshape "
                                          r"with text_guidance=false\).*set kd.action_kl.weight=0"):
        load_config("configs/signal_teacher_wrn16_1.yaml", ["kd.action_kl.weight=1.0", "kd.action_kl.source=shape"])
    with pytest.raises(ConfigError, match=r"kd.attr needs 'attr' from the teacher \(teacher.arch=wrn16_3\)"):
        load_config("configs/wrn16_3_wrn16_1.yaml", ["kd.attr.weight=1.0", "kd.attr.source=teacher"])
    load_config("configs/wrn16_3_wrn16_1.yaml", ["kd.sp.weight=1.0", "kd.sp.source=teacher"])   # features: fine
    load_config("configs/default.yaml", ["teacher.text_guidance=false", "stage=teacher"])   # nothing distilled
    with pytest.raises(ConfigError, match=r"kd.sub_kl needs 'sub_logits' from the teacher \(teacher.arch=vqshape "
                                          r"with text_guidance=true\).*set kd.sub_kl.weight=0"):
        load_config("configs/default.yaml", ["kd.sub_kl.weight=1.0", "kd.sub_kl.source=action"])   # attention target
    with pytest.raises(ConfigError, match="kd.sub_kl needs 'sub_logits' from the student"):
        load_config("configs/synthetic_subactions.yaml", ["student.arch=vqshape_student", "kd.sub_kl.weight=1.0"])
    load_config("configs/synthetic_subactions.yaml", ["kd.sub_kl.weight=1.0", "kd.sub_kl.source=action"])


def test_check_outputs_names_loss_key_and_side():
    keys = {"logits", "features", "attr", "code_dist"}
    check_outputs(["logit_kd", "attr", "code_kl", "feature", "sp"], keys, keys)   # a workable pairing passes
    with pytest.raises(ConfigError, match="kd.action_kl needs 'action_logits' from the teacher"):
        check_outputs(["action_kl"], {"action_logits"}, {"logits"})
    with pytest.raises(ConfigError, match="kd.code_kl needs 'code_dist' from the student"):
        check_outputs(["code_kl"], {"logits"}, {"code_dist"})
    with pytest.raises(ConfigError, match="unknown KD loss 'kd'"):
        check_outputs(["kd"], keys, keys)
