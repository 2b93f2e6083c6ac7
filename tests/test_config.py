"""Config schema: every YAML under configs/ loads, typos and bad values name the key."""
from pathlib import Path

import pytest

from kd.config import ConfigError, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads_against_the_schema(path):
    cfg = load_config(path)
    assert cfg.run_dir.startswith("runs/")


def test_the_schemas_defaults_are_the_default_pairing():
    """One default: what load_config() builds is what configs/default.yaml names, value for value, and it is
    the text-guided pairing (not the official VQShape recipe a dataclass default could drift back to)."""
    from kd.config import to_yaml
    cfg = load_config()
    assert to_yaml(cfg) == to_yaml(load_config("configs/default.yaml"))
    assert (cfg.teacher.arch, cfg.teacher.text_guidance, cfg.teacher.vqshape.dim, cfg.kd.coef) == ("vqshape", True, 64, "dynamic")
    assert [s.name for s in cfg.kd.sources] == ["shape", "action"] and cfg.kd.workspace.enabled


@pytest.mark.parametrize("name", ["signal_teacher_wrn16_1.yaml", "text_teacher_vqshape_student.yaml"])
def test_pairings_that_say_they_use_the_default_teacher_recipe_do(name):
    """An ablation is only an ablation of the default if its teacher is the default's: both pairings state
    "the default teacher recipe" (they had drifted from it by four options before this test)."""
    from omegaconf import OmegaConf
    default = OmegaConf.to_container(load_config("configs/default.yaml").teacher.vqshape)
    assert OmegaConf.to_container(load_config(f"configs/{name}").teacher.vqshape) == default
    assert load_config(f"configs/{name}").train.teacher_ssl_epochs == load_config("configs/default.yaml").train.teacher_ssl_epochs

def test_overrides_and_required_keys():
    cfg = load_config(overrides=["train.epochs=3", "train.max_steps=7", "stage=teacher", "seed=5",
                                 "data.name=synthetic", "teacher.text_guidance=false", "run_dir=/tmp/x"])
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.stage, cfg.seed) == (3, 7, "teacher", 5)
    assert cfg.data.name == "synthetic" and cfg.teacher.text_guidance is False and cfg.run_dir == "/tmp/x"
    assert load_config().train.max_steps is None


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("teacher.vqshape.dimm=3", "unknown config key 'teacher.vqshape.dimm'"),
    ("kd.logit_kd.wieght=1", "unknown config key 'kd.logit_kd.wieght'"),
    ("train.epochs=many", "bad value for config key 'train.epochs'"),
    ("stage=both", "stage='both' is not one of"),
    ("kd.coef=adaptive", "kd.coef='adaptive' is not one of"),
    ("student.vqshape.dim=30", "student.vqshape.dim=30 must be divisible"),
    ("kd.alpha=1.5", "kd.alpha=1.5 must lie in"),
    ("train.epochs", "key=value"),
    ("kd.attr.source=shapes", r"kd.attr.source='shapes' is not one of kd.sources \['shape', 'action'\]; add"),
    ("kd.workspace.enabled=false", "kd.coef=dynamic takes its coefficients from the workspace"),
    ("train.teacher_ssl_epochs=2 teacher.arch=wrn16_3", "needs a VQShape teacher"),
    ("teacher.vqshape.span_layout=partition", "unknown config key 'teacher.vqshape.span_layout'"),  # retired
    ("teacher.alignment.scores_from_step=-1", r"teacher.alignment.scores_from_step=-1 must be >= 0"),
    ("teacher.alignment.context=-1", r"teacher.alignment.context=-1 must be >= 0"),
    ("teacher.alignment.layers=-1", r"teacher.alignment.layers=-1 must be >= 0 \(0: an MLP per token"),
    # each loss holds only its own parameters, checked at load (not when the student stage builds it)
    ("kd.attr.temperature=2", "unknown config key 'kd.attr.temperature'"),
    ("kd.sp.attr_weights.mu=1", "unknown config key 'kd.sp.attr_weights'"),
    ("kd.logit_kd.temperature=0", r"kd.logit_kd.temperature=0.0 must be > 0"),
    ("kd.attr.attr_weights.sgima=1", r"kd.attr.attr_weights has unknown attributes \['sgima'\]"),
    (" ".join(f"kd.attr.attr_weights.{a}=0" for a in ("z_e", "mu", "sigma", "t", "l")), "attr_weights are all 0"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/default.yaml", overrides=override.split(" "))


def test_the_config_knows_every_kd_loss():
    from kd.config import KD_LOSS_KEYS
    from kd.losses import LOSSES
    assert set(KD_LOSS_KEYS) == set(LOSSES)


def test_typo_in_a_yaml_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="train.lerning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_the_window_length_has_one_source():
    """data.length sets each VQShape's len_input and num_patch; a hand-written value that disagrees
    is an error naming data.length, one that agrees is accepted."""
    cfg = load_config(overrides=["data.length=256"])
    for side in ("teacher", "student"):
        assert (cfg[side].vqshape.len_input, cfg[side].vqshape.num_patch) == (256, 32)
    assert load_config(overrides=["data.length=256", "teacher.vqshape.num_patch=32"]).teacher.vqshape.len_input == 256
    with pytest.raises(ConfigError, match=r"teacher.vqshape.len_input=512 disagrees with data.length=256.*remove"):
        load_config(overrides=["data.length=256", "teacher.vqshape.len_input=512"])
    with pytest.raises(ConfigError, match=r"data.length=100 must be a multiple of teacher.vqshape.patch_size=8"):
        load_config(overrides=["data.length=100"])
    assert load_config("configs/wrn16_3_wrn16_1.yaml", ["data.length=100"]).data.length == 100   # no VQShape: any length


def test_a_saved_config_round_trips_and_one_from_an_older_version_names_the_commit_that_reads_it():
    """config_from_dict(saved resolved config) is the same config; a saved config holding a key this
    version does not know (an option retired since) fails with the key and the last commit that reads it."""
    from omegaconf import OmegaConf
    from kd.config import LAST_COMPATIBLE_COMMIT, config_from_dict
    from kd.identity import comparable
    cfg = load_config("configs/default.yaml")
    old = OmegaConf.to_container(cfg, resolve=True)
    assert comparable(config_from_dict(old)) == comparable(cfg)
    old["teacher"]["vqshape"]["span_layout"] = "free"
    with pytest.raises(ConfigError, match=f"teacher.vqshape.span_layout.*older version.*commit {LAST_COMPATIBLE_COMMIT}"):
        config_from_dict(old)


def test_a_negative_sub_action_context_fails_at_load():
    with pytest.raises(ConfigError, match=r"kd.sub_kl.context=-1 must be >= 0"):
        load_config("configs/synthetic_subactions.yaml", ["kd.sub_kl.context=-1"])


def test_two_runs_are_the_same_run_whatever_they_set_where_they_do_not_read():
    """comparable() leaves out what a run never reads: a run without a teacher ignores every teaching key, a CNN
    teacher ignores the VQShape sections, a loss at weight 0 its source; what is read still tells runs apart,
    and a study's teacher key follows the same rule."""
    from kd.identity import comparable
    from kd.cv import teacher_key
    same = lambda path, a, b: comparable(load_config(path, a)) == comparable(load_config(path, b))
    assert same("configs/baseline_wrn16_1.yaml", [], ["kd.alpha=0.2", "teacher.vqshape.dim=128", "train.teacher_lr=1"])
    assert not same("configs/baseline_wrn16_1.yaml", [], ["train.lr=0.1"])
    cnn = "configs/wrn16_3_wrn16_1.yaml"
    assert same(cnn, [], ["teacher.vqshape.dim=128", "teacher.fusion.heads=2", "kd.attr.source=x", "student.vqshape.dim=64"])
    assert not same(cnn, [], ["teacher.cnn.wrn_stem_stride=2"]) and not same(cnn, [], ["kd.logit_kd.temperature=2"])
    assert teacher_key(load_config(cnn)) == teacher_key(load_config(cnn, ["teacher.vqshape.dim=128"]))
    assert teacher_key(load_config(cnn)) != teacher_key(load_config(cnn, ["teacher.cnn.kernel_size=3"]))
    assert not same("configs/default.yaml", [], ["teacher.vqshape.dim=128"])     # a VQShape teacher reads it
    # teacher.alignment's parameters count only for a teacher that aligns (adding one does not re-key cached teachers)
    assert same("configs/default.yaml", [], ["teacher.alignment.p_stay=0.5", "teacher.alignment.levels=true"])
    ordered = ["teacher.alignment.target=ordered"]
    assert not same("configs/default.yaml", [], ordered)
    assert not same("configs/default.yaml", ordered, [*ordered, "teacher.alignment.p_stay=0.5"])
    assert teacher_key(load_config("configs/default.yaml", ordered)) != teacher_key(
        load_config("configs/default.yaml", [*ordered, "teacher.alignment.chain=once"]))
    assert same(cnn, [], ordered)                     # a CNN teacher reads no alignment


def test_a_finished_runs_identity_leaves_out_where_its_extra_teachers_are_stored():
    """kd.cv compares a finished run with the run it would make now without the extra teachers' checkpoint paths
    (which teacher it is, is its key); their names still count."""
    from omegaconf import OmegaConf
    from kd.config import ExtraTeacherConfig
    from kd.cv import same_run_view

    def with_extra(name, path):
        cfg = load_config("configs/default.yaml")
        cfg.kd.extra_teachers.append(OmegaConf.structured(ExtraTeacherConfig(name, path)))
        return same_run_view(cfg)
    assert with_extra("wrn", "/a/teacher") == with_extra("wrn", "/b/teacher")
    assert with_extra("wrn", "/a/teacher") != with_extra("cnn", "/a/teacher")
