"""The topological teacher (teacher.arch: topo, teachers/topo.py): its persistence diagrams are the
0-dimensional sublevel-set persistence of the signal (checked against an elder-rule union-find), its
images do not depend on a channel's offset, scale or direction of time, it caches each window once,
its declared outputs are its real ones, it learns to tell windows apart by their dips, and a wrong
config fails at load."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from kd.config import ConfigError, TopoConfig, load_config
from kd.contract import teacher_outputs
from kd.cv import teacher_key
from teachers.topo import PersistenceImages, TopoTeacher, lower_star_diagram


def elder_rule_pairs(v):
    """Brute force: add vertices in order of value, join each to its already-present neighbours; when two
    components meet, the younger (higher minimum) dies at the current value."""
    parent, birth, pairs = {}, {}, []

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in sorted(range(len(v)), key=lambda i: v[i]):
        parent[i], birth[i] = i, v[i]
        for j in (i - 1, i + 1):
            if j in parent:
                a, b = root(i), root(j)
                if a != b:
                    young, old = (a, b) if birth[a] > birth[b] else (b, a)
                    if birth[young] < v[i]:                                  # zero-persistence pairs are not points
                        pairs.append((birth[young], v[i]))
                    parent[young] = old
    return sorted(pairs)


def test_diagram_of_a_hand_made_signal():
    # minima 0 (index 0), 1 (index 2), -1 (index 4): the one born at 1 dies at 2, the one born at 0 at 3,
    # the global minimum never dies (dropped)
    assert sorted(map(tuple, lower_star_diagram(np.array([0.0, 2.0, 1.0, 3.0, -1.0])).tolist())) == [(0.0, 3.0), (1.0, 2.0)]


@pytest.mark.parametrize("seed", range(5))
def test_diagram_equals_the_elder_rule_on_random_signals(seed):
    v = np.random.default_rng(seed).normal(size=40)
    got = sorted(map(tuple, lower_star_diagram(v).tolist()))
    assert np.allclose(got, elder_rule_pairs(v.tolist()))


def images():
    return PersistenceImages(pixel_size=0.25, sigma=0.05, birth_range=3.0, pers_max=4.0)


def test_images_ignore_offset_scale_and_time_direction_but_not_the_dips():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 128)).cumsum(-1)
    pi = images()(w)
    assert pi.shape == (2, 2, 24, 16) and pi.min() > -1e-6 and pi.sum() > 0   # (persim: rounding below 0)
    assert np.allclose(images()(3.0 * w + 5.0), pi, atol=1e-5)              # z-normalised per channel
    assert np.allclose(images()(w[:, ::-1].copy()), pi, atol=1e-5)          # a diagram has no time axis
    assert not np.allclose(images()(w ** 2), pi, atol=1e-3)
    flat = images()(np.ones((1, 64)))
    assert not flat.any()                                                   # no dips, no peaks: an empty image
    up = images()(w[:1])[0]
    down = images()(-w[:1])[0]
    assert np.allclose(up[0], down[1]) and np.allclose(up[1], down[0])      # superlevel of x = sublevel of -x


def tiny_teacher(channels=2, classes=2):
    torch.manual_seed(0)
    return TopoTeacher(TopoConfig(hidden=16, dropout=0.0), channels, classes)


def test_each_window_is_computed_once_and_a_batch_equals_its_windows(monkeypatch):
    teacher = tiny_teacher().eval()
    calls = []
    real = teacher.images.__class__.__call__
    monkeypatch.setattr(teacher.images.__class__, "__call__", lambda self, w: calls.append(1) or real(self, w))
    x = torch.randn(4, 2, 64)
    with torch.no_grad():
        batch = teacher(x).logits
        assert len(calls) == 4
        again = teacher(x).logits
        assert len(calls) == 4 and torch.equal(batch, again)                 # looked up, not recomputed
        one_by_one = torch.cat([teacher(x[i:i + 1]).logits for i in range(4)])
        assert torch.allclose(batch, one_by_one, atol=1e-6)
        teacher(x + 1e-3)
        assert len(calls) == 8                                              # a changed window is a new key
        teacher.cache_windows = 5
        teacher(x[:1] - 1.0)
        assert len(teacher._cache) == 5                                     # the oldest dropped, not grown
        teacher(x[:1])
        assert len(calls) == 10                                             # ... and computed again when asked


def test_declared_teach_outputs_are_the_real_ones():
    cfg = load_config("configs/topo_wrn16_1.yaml", TINY)
    from teachers import build_teacher
    teacher = build_teacher(cfg.teacher, 3, 6).eval()
    assert isinstance(teacher, TopoTeacher)
    with torch.no_grad():
        out = teacher.teach(torch.randn(2, 3, cfg.data.length))
    assert out.provided() == teacher_outputs(cfg.teacher)
    assert out.features.shape == (2, cfg.teacher.topo.hidden, 1) and out.feature_tokens.shape == (2, 1, 128)


def test_it_learns_to_count_dips():
    """Two classes of noisy waves, 2 or 6 cycles at a random phase, amplitude and offset: the number of
    dips is in the diagrams and nowhere in the channel statistics."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 128)

    def windows(n):
        y = rng.integers(0, 2, n)
        cycles = np.where(y == 1, 6, 2)[:, None]
        x = rng.uniform(0.5, 2, (n, 1)) * np.sin(2 * math.pi * (cycles * t + rng.uniform(0, 1, (n, 1))))
        x = x + rng.uniform(-1, 1, (n, 1)) + 0.05 * rng.normal(size=(n, 128))
        return torch.tensor(x[:, None], dtype=torch.float32), torch.tensor(y)

    (x, y), (x_test, y_test) = windows(64), windows(64)
    teacher = tiny_teacher(channels=1).train()
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        teacher.losses(teacher.fit_forward({"x": x}), y)["ce"].backward()
        opt.step()
    with torch.no_grad():
        acc = (teacher.eval().predict(x_test).argmax(-1) == y_test).float().mean().item()
    assert acc >= 0.95


def test_gradients_reach_every_parameter():
    teacher = tiny_teacher().train()
    F.cross_entropy(teacher(torch.randn(4, 2, 64)).logits, torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.parameters())


def test_topo_mistakes_fail_at_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"teacher.topo.pixel_size=0.0 must be > 0"):
        load_config("configs/topo_wrn16_1.yaml", ["teacher.topo.pixel_size=0"])
    with pytest.raises(ConfigError, match=r"teacher.topo.pers_max=0.1 gives a grid narrower than one pixel"):
        load_config("configs/topo_wrn16_1.yaml", ["teacher.topo.pers_max=0.1"])
    with pytest.raises(ConfigError, match=r"teacher.members=2 builds an ensemble of CNN teachers; teacher.arch='topo'"):
        load_config("configs/topo_wrn16_1.yaml", ["teacher.members=2"])


def test_a_teacher_key_reads_only_its_own_architecture_sections():
    def key(config, *overrides):
        return teacher_key(load_config(config, list(overrides)))
    assert key("configs/ensemble_wrn16_1.yaml") == key("configs/ensemble_wrn16_1.yaml", "teacher.vqshape.dim=32",
                                                       "teacher.topo.sigma=0.1", "teacher.fusion.heads=2")
    assert key("configs/ensemble_wrn16_1.yaml") != key("configs/ensemble_wrn16_1.yaml", "teacher.cnn.kernel_size=3")
    assert key("configs/topo_wrn16_1.yaml") != key("configs/topo_wrn16_1.yaml", "teacher.topo.sigma=0.1")
    assert key("configs/topo_wrn16_1.yaml") == key("configs/topo_wrn16_1.yaml", "teacher.cnn.kernel_size=3")
    assert key("configs/topo_wrn16_1.yaml") == key("configs/topo_wrn16_1.yaml", "teacher.vqshape.dim=32",
                                                   "teacher.fusion.heads=2")
    assert key("configs/default.yaml") != key("configs/default.yaml", "teacher.fusion.heads=2")
    assert key("configs/default.yaml") == key("configs/default.yaml", "teacher.topo.sigma=0.1")
    # how a teacher teaches is the pairing's choice: one trained teacher serves both
    assert key("configs/default.yaml") == key("configs/default.yaml", "teacher.fusion.teach_keys=vocab")
