"""Data layer: resampling, watch / npz / synthetic splits, validation errors, laziness, ground truth."""
from __future__ import annotations

import contextlib
import io
import json
import time
import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kd.config import DataConfig, NpzConfig, SyntheticConfig, WatchConfig
from kd.data import DATASETS, DataError, Splits, build_splits, nearest_indices, resample
from kd.data.__main__ import main as cli_main
from kd.data.synthetic import CLASSES, PRIMITIVES, SyntheticSpec, class_of, generate_raw
from kd.data.watch import build_from_recordings, cut_windows, load_watch

REST = PRIMITIVES.index("rest")
INFO_KEYS = {"name", "num_channels", "length", "num_classes", "class_names", "windows", "class_counts",
             "subjects", "split"}


def runs(labels) -> list:
    """Run-length encoding: [(value, first, last)] of consecutive equal labels."""
    labels = np.asarray(labels)
    cuts = np.flatnonzero(np.diff(labels)) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(labels)] - 1
    return [(int(labels[a]), int(a), int(b)) for a, b in zip(starts, ends)]


def subject_sets(splits: Splits) -> dict:
    return {name: set(d.subjects.tolist()) for name, d in splits.datasets().items()}


# --------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("T,L", [(500, 512), (512, 500), (7, 20), (2, 5), (33, 4)])
def test_resample_matches_np_interp(T, L):
    x = torch.randn(2, 3, T, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
    out = resample(x, L)
    assert out.shape == (2, 3, L) and out.dtype == torch.float64
    pos = np.linspace(0, T - 1, L)
    ref = np.stack([np.interp(pos, np.arange(T), row) for row in x.reshape(-1, T).numpy()]).reshape(2, 3, L)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)
    assert torch.equal(out[..., 0], x[..., 0]) and torch.allclose(out[..., -1], x[..., -1], atol=1e-12)


def test_resample_identity_and_dtype():
    x = torch.randn(4, 512)
    assert torch.equal(resample(x, 512), x)
    assert resample(x, 100).dtype == torch.float32
    with pytest.raises(DataError, match="floating-point"):
        resample(torch.arange(10), 5)


@pytest.mark.parametrize("T,L", [(500, 512), (512, 500), (3, 11)])
def test_nearest_indices_follow_the_linear_grid(T, L):
    idx = nearest_indices(T, L)
    pos = np.arange(L) * (T - 1) / (L - 1)     # source position of each output of `resample`
    assert idx[0] == 0 and idx[-1] == T - 1
    assert np.all(np.abs(idx - pos) <= 0.5 + 1e-12)


# --------------------------------------------------------------------------- watch
@pytest.fixture(scope="module")
def watch_raw():
    return load_watch()


@pytest.fixture(scope="module")
def watch(watch_raw):
    return build_from_recordings(watch_raw, DataConfig())


def expected_windows(lengths, window, stride, cover_tail):
    n = 0
    for T in lengths:
        n += (T - window) // stride + 1 + int(cover_tail and (T - window) % stride != 0)
    return n


def test_watch_window_count_from_recording_lengths(watch, watch_raw):
    lengths = [len(r) for r in watch_raw["X"]]
    total = sum(len(d) for d in watch.datasets().values())
    assert total == expected_windows(lengths, 500, 250, True) == 910
    no_tail = build_from_recordings(watch_raw, DataConfig(watch=WatchConfig(cover_tail=False)))
    assert sum(len(d) for d in no_tail.datasets().values()) == expected_windows(lengths, 500, 250, False) == 770


def test_watch_default_split_is_by_subject(watch):
    subj = subject_sets(watch)
    assert subj == {"train": set(range(1, 8)), "val": {8}, "test": {9, 10}}
    recs = {name: set(d.recordings.tolist()) for name, d in watch.datasets().items()}
    assert not (recs["train"] & recs["val"] or recs["train"] & recs["test"] or recs["val"] & recs["test"])
    assert watch.class_names == ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
    assert (watch.num_channels, watch.length, watch.name) == (6, 512, "watch")


def test_watch_items_are_resampled_recording_windows(watch, watch_raw):
    item = watch.train[0]
    assert item["x"].shape == (6, 512) and item["x"].dtype == torch.float32
    r = int(watch.train.recordings[0])      # first window of a recording starts at sample 0
    ref = resample(torch.from_numpy(watch_raw["X"][r][:500].T.copy()), 512).float()
    torch.testing.assert_close(item["x"], ref)
    assert int(item["y"]) == watch_raw["y"][r] and int(item["subject"]) == watch_raw["subject"][r]
    windows, source = cut_windows(watch_raw["X"], 500, 250, True)
    last = np.flatnonzero(source == r)[-1]   # cover_tail: the last window is flush with the end
    np.testing.assert_array_equal(windows[last], watch_raw["X"][r][-500:].T)


def test_watch_subject_overrides(watch_raw):
    given = build_from_recordings(watch_raw, DataConfig(test_subjects=[1, 2], val_subjects=[3]))
    assert subject_sets(given) == {"train": set(range(4, 11)), "val": {3}, "test": {1, 2}}
    only_test = build_from_recordings(watch_raw, DataConfig(test_subjects=[1, 2]))
    assert subject_sets(only_test)["val"] == {10}


def test_watch_loader_collates(watch):
    batch = next(iter(DataLoader(watch.train, batch_size=5, shuffle=True)))
    assert batch["x"].shape == (5, 6, 512) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (5,) and batch["y"].dtype == torch.int64
    assert batch["subject"].dtype == torch.int64
    assert torch.equal(watch.train[int(batch["index"][0])]["x"], batch["x"][0])


def test_info_is_json_and_complete(watch):
    info = json.loads(json.dumps(watch.info()))
    assert INFO_KEYS <= set(info)
    assert info["windows"]["total"] == sum(info["windows"][s] for s in ("train", "val", "test"))
    for s in ("train", "val", "test"):
        assert sum(info["class_counts"][s].values()) == info["windows"][s]
    assert info["split"]["method"] == "by subject"


# --------------------------------------------------------------------------- watch-style recordings: errors
def recordings(n=3, T=100, C=6):
    rng = np.random.default_rng(0)
    return [rng.normal(size=(T, C)) for _ in range(n)]


def test_recording_shorter_than_window():
    recs = recordings()
    recs[1] = recs[1][:30]
    with pytest.raises(DataError, match="recording 1 has 30 samples, shorter than the window of 50"):
        cut_windows(recs, 50, 25, True)


def test_recording_channel_mismatch_and_rank():
    recs = recordings()
    recs[2] = recs[2][:, :4]
    with pytest.raises(DataError, match="recording 2 has 4 channels but recording 0 has 6"):
        cut_windows(recs, 50, 25, True)
    recs[2] = recs[0][:, 0]
    with pytest.raises(DataError, match=r"recording 2 must be 2-D \[T, C\]"):
        cut_windows(recs, 50, 25, True)


def test_recording_nonfinite_names_recording_and_channel():
    recs = recordings()
    recs[2][40, 3] = np.nan
    with pytest.raises(DataError, match="recording 2 has a non-finite value .* channel 3 at sample 40"):
        cut_windows(recs, 50, 25, True)


def test_recording_labels_out_of_range():
    data = {"X": recordings(), "y": np.array([0, 1, 7]), "subject": np.array([1, 2, 3]), "y_labels": ["a", "b"]}
    with pytest.raises(DataError, match=r"labels \[7\] outside 0..1"):
        build_from_recordings(data, DataConfig(watch=WatchConfig(window=50, stride=25)))


# --------------------------------------------------------------------------- npz
def write_npz(path, N=40, T=64, C=3, subjects=True, layout="NTC", **extra):
    rng = np.random.default_rng(1)
    arrays = {"X": rng.normal(size=(N, T, C)).astype(np.float32), "y": rng.integers(0, 3, N)}
    if layout == "NCT":
        arrays["X"] = arrays["X"].transpose(0, 2, 1).copy()
    if subjects:
        arrays["subject"] = np.repeat(np.arange(10), N // 10)
    arrays["class_names"] = np.array(["a", "b", "c"])
    arrays.update(extra)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


def npz_cfg(path, **kw):
    npz_keys = {k: kw.pop(k) for k in ("layout", "class_names", "val_fraction", "test_fraction") if k in kw}
    return DataConfig(name="npz", length=kw.pop("length", 128), npz=NpzConfig(path=path, **npz_keys), **kw)


def test_npz_layouts_agree_and_default_subject_split(tmp_path):
    ntc = build_splits(npz_cfg(write_npz(tmp_path / "a.npz")))
    nct = build_splits(npz_cfg(write_npz(tmp_path / "b.npz", layout="NCT"), layout="NCT"))
    for a, b in zip(ntc.datasets().values(), nct.datasets().values()):
        assert torch.equal(a.x, b.x)
    assert ntc.train.x.shape[1:] == (3, 128) and ntc.class_names == ["a", "b", "c"]
    # 10 subjects: last round(20%) = 2 test, the round(15%) = 2 before them val
    assert subject_sets(ntc) == {"train": set(range(6)), "val": {6, 7}, "test": {8, 9}}


def test_npz_without_subjects_uses_contiguous_blocks(tmp_path):
    splits = build_splits(npz_cfg(write_npz(tmp_path / "a.npz", N=100, subjects=False),
                                  val_fraction=0.1, test_fraction=0.3))
    assert [len(d) for d in splits.datasets().values()] == [60, 10, 30]
    info = splits.info()
    assert "contiguous blocks" in info["split"]["method"] and info["split"]["blocks"]["test"] == [70, 100]
    assert info["subjects"]["train"] is None and int(splits.test[0]["subject"]) == -1
    X = np.load(tmp_path / "a.npz")["X"]      # test block = the last 30 windows, in order
    ref = resample(torch.from_numpy(X[70].T.copy()), 128)
    torch.testing.assert_close(splits.test[0]["x"], ref)


def test_npz_config_class_names_win(tmp_path):
    splits = build_splits(npz_cfg(write_npz(tmp_path / "a.npz"), class_names=["x", "y", "z"]))
    assert splits.class_names == ["x", "y", "z"]


@pytest.mark.parametrize("make,cfg_kw,message", [
    (lambda p: str(p / "missing.npz"), {}, "does not exist"),
    (lambda p: None, {}, "data.npz.path is not set"),
    (lambda p: write_npz(p / "a.npz", y=None), {}, "has no 'y' array"),
    (lambda p: write_npz(p / "a.npz", X=np.zeros((40, 64))), {}, r"must be 3-D .* got shape \(40, 64\)"),
    (lambda p: write_npz(p / "a.npz", X=np.zeros((40, 6, 500))), {}, "more channels than samples.*'NCT'"),
    (lambda p: write_npz(p / "a.npz", y=np.r_[np.zeros(39, int), 5]), {}, r"labels \[5\] outside 0..2"),
    (lambda p: write_npz(p / "a.npz", y=np.r_[np.zeros(39, int), -1]), {}, r"labels \[-1\] outside"),
    (lambda p: write_npz(p / "a.npz", y=np.zeros(39, int)), {}, r"'y' must have shape \(40,\)"),
    (lambda p: write_npz(p / "a.npz", class_names=None), {}, "no class names"),
    (lambda p: write_npz(p / "a.npz"), {"test_subjects": [1, 2], "val_subjects": [2, 3]},
     r"subjects \[2\] are in both"),
    (lambda p: write_npz(p / "a.npz"), {"test_subjects": [42]}, r"test_subjects asks for subjects \[42\]"),
    (lambda p: write_npz(p / "a.npz"), {"test_subjects": list(range(5)), "val_subjects": list(range(5, 10))},
     r"the train split is empty: it gets subjects \[\]"),
    (lambda p: write_npz(p / "a.npz", subjects=False), {"test_subjects": [1]}, "no 'subject' array"),
    (lambda p: write_npz(p / "a.npz", N=10, subjects=False), {"val_fraction": 0.01}, "the val split is empty"),
])
def test_npz_errors_say_what_is_wrong(tmp_path, make, cfg_kw, message):
    cfg = npz_cfg(make(tmp_path), **cfg_kw)
    with pytest.raises(DataError, match=message):
        build_splits(cfg)


def test_npz_nonfinite_names_window_and_channel(tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 64, 3))
    X[17, 5, 1] = np.inf
    with pytest.raises(DataError, match="npz window 17 has a non-finite value .* channel 1 at sample 5"):
        build_splits(npz_cfg(write_npz(tmp_path / "a.npz", X=X)))


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="'nope'.*hapt.*npz.*synthetic.*watch"):
        build_splits(DataConfig(name="nope"))
    assert set(DATASETS) == {"watch", "npz", "synthetic", "hapt"}


# --------------------------------------------------------------------------- synthetic
def synthetic(**kw):
    length = kw.pop("length", 512)
    return build_splits(DataConfig(name="synthetic", length=length, synthetic=SyntheticConfig(**kw)))


def test_synthetic_split_is_by_subject_and_items_match_labels():
    splits = synthetic(num_windows=300)
    subj = subject_sets(splits)
    assert subj == {"train": set(range(7)), "val": {7}, "test": {8, 9}}
    assert sum(len(d) for d in splits.datasets().values()) == 300
    for d in splits.datasets().values():
        for i in (0, len(d) - 1):
            item = d[i]
            assert int(item["y"]) == d.labels[i] and int(item["subject"]) == d.subjects[i]
            assert int(item["index"]) == i
            assert item["x"].shape == (3, 512) and item["subaction"].shape == (512,)
            assert item["subaction"].dtype == torch.int64
    batch = next(iter(DataLoader(splits.val, batch_size=4)))
    assert batch["x"].shape == (4, 3, 512) and batch["subaction"].shape == (4, 512)
    assert set(np.unique(splits.train.labels)) == set(range(len(CLASSES)))   # all classes drawn


def test_synthetic_deterministic_per_seed_and_index():
    a, b = synthetic(num_windows=200), synthetic(num_windows=500)   # window i does not depend on N
    for i in (0, 5, 57):
        assert a.train.indices[i] == b.train.indices[i]
        for key in ("x", "y", "subaction"):
            assert torch.equal(a.train[i][key], a.train[i][key])
            assert torch.equal(a.train[i][key], b.train[i][key])
    c = synthetic(num_windows=200, seed=1)
    assert not torch.equal(a.train[0]["x"], c.train[0]["x"])


def test_synthetic_is_lazy_for_100k_windows():
    tracemalloc.start()
    t0 = time.perf_counter()
    splits = synthetic(num_windows=100_000)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sum(len(d) for d in splits.datasets().values()) == 100_000
    assert seconds < 2.0
    assert peak < 32e6     # the windows themselves would be 100k * 3 * 512 * 4 B = 614 MB
    for d in splits.datasets().values():   # nothing held per window beyond a few int64s
        held = sum(v.nbytes for v in vars(d).values() if isinstance(v, (np.ndarray, torch.Tensor)))
        assert held <= 4 * 8 * len(d) + 8 * 512
    assert splits.test[len(splits.test) - 1]["x"].shape == (3, 512)


def test_synthetic_segments_follow_the_class_sequence():
    spec = SyntheticSpec.from_config(SyntheticConfig(noise=0.0))
    for i in range(20):
        x, sub = generate_raw(spec, i)                                 # (C, T), (T,)
        seq = [PRIMITIVES[p] for p, _, _ in runs(sub)]
        assert seq == list(CLASSES.values())[class_of(spec.seed, np.array([i]))[0]]
        assert all(b - a + 1 >= 0.08 * 500 - 1 for _, a, b in runs(sub))   # minimum segment length
        for p, a, b in runs(sub):       # at noise 0 only rest and hold_high are flat
            flat = np.allclose(x[:, a:b + 1], x[:, a:a + 1])
            assert flat == (PRIMITIVES[p] in ("rest", "hold_high")), (i, PRIMITIVES[p])
        assert len({tuple(np.round(x[c], 6)) for c in range(x.shape[0])}) == x.shape[0]   # channels differ
    splits = synthetic(num_windows=60)
    for i in range(0, len(splits.train), 7):                          # resampled items keep the sequence
        item = splits.train[i]
        seq = [PRIMITIVES[p] for p, _, _ in runs(item["subaction"])]
        assert seq == CLASSES[splits.class_names[int(item["y"])]]


def test_synthetic_random_phase_and_cycles_walk_the_class_cycle():
    spec = SyntheticSpec.from_config(SyntheticConfig(noise=0.0, random_phase=True, cycles_min=0.6, cycles_max=1.6))
    starts, counts = set(), set()
    for i in range(60):
        cycle = [PRIMITIVES.index(p) for p in list(CLASSES.values())[class_of(spec.seed, np.array([i]))[0]]]
        prims = [p for p, _, _ in runs(generate_raw(spec, i)[1])]
        starts.add(cycle.index(prims[0]))
        counts.add(len(prims))
        # every change advances one step along the cycle, wrapping around (a repeat of the same
        # primitive across the wrap merges into one run, so compare runs with the cycle's successor)
        assert all(cycle[(cycle.index(a) + 1) % 5] == b for a, b in zip(prims, prims[1:]))
    assert starts == set(range(5)) and min(counts) <= 3 and max(counts) >= 7
    with pytest.raises(DataError, match="cycles_min=2.0 and cycles_max=1.0"):
        SyntheticSpec.from_config(SyntheticConfig(cycles_min=2.0, cycles_max=1.0))


def test_synthetic_subaction_aligned_with_resampled_signal():
    splits = synthetic(num_windows=200, noise=0.0)
    checked = 0
    for i in range(len(splits.train)):
        item = splits.train[i]
        x, sub = item["x"].numpy(), item["subaction"].numpy()         # (C, L), (L,)
        for p, j0, j1 in runs(sub):
            if p != REST or j1 - j0 < 4:
                continue
            level = x[:, (j0 + j1) // 2][:, None]
            flat = np.all(np.abs(x - level) <= 1e-5, axis=0)          # (L,)
            assert flat[j0 + 1:j1].all()                               # inside the labelled run: flat
            assert j0 == 0 or not flat[j0 - 1]                         # one step outside: not rest any more
            assert j1 == len(sub) - 1 or not flat[j1 + 1]
            checked += 1
    assert checked > 50


def test_synthetic_noise_is_additive_gaussian():
    """Noise has std `noise` at raw resolution; linear resampling then mixes neighbours (less variance)."""
    clean, noisy = (SyntheticSpec.from_config(SyntheticConfig(noise=n)) for n in (0.0, 0.3))
    raw = generate_raw(noisy, 3)[0] - generate_raw(clean, 3)[0]        # (C, T)
    assert abs(raw.std() - 0.3) < 0.02 and abs(raw.mean()) < 0.03
    frac = np.arange(512) * 499 / 511 % 1.0                              # interpolation weight of each output
    expected = 0.3 * np.sqrt(np.mean((1 - frac) ** 2 + frac ** 2))
    splits = [synthetic(num_windows=30, noise=n) for n in (0.0, 0.3)]
    diff = (splits[1].train[3]["x"] - splits[0].train[3]["x"]).numpy()   # (C, L)
    assert abs(diff.std() - expected) < 0.02
    assert torch.equal(splits[1].train[3]["subaction"], splits[0].train[3]["subaction"])


def test_synthetic_bad_config():
    with pytest.raises(DataError, match="data.synthetic.raw_length=10 must be >= 50"):
        synthetic(raw_length=10)
    with pytest.raises(DataError, match="data.synthetic.num_subjects=2 must be >= 3"):
        synthetic(num_subjects=2)
    with pytest.raises(DataError, match=r"test_subjects asks for subjects \[10\]"):
        build_splits(DataConfig(name="synthetic", test_subjects=[10]))


# --------------------------------------------------------------------------- CLI
def test_cli_info_prints_json():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli_main(["info", "--dataset", "synthetic", "synthetic.num_windows=100", "length=256"])
    info = json.loads(out.getvalue())
    assert INFO_KEYS <= set(info)
    assert info["windows"]["total"] == 100 and info["length"] == 256 and info["num_channels"] == 3
