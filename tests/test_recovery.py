"""Sub-action recovery metric on hand-made spans, and end to end on synthetic data."""
import json

import numpy as np
import pytest
import torch

import distill
from kd.recovery import primitive_of_vocab, span_majority, step_predictions, subaction_recovery
from tests.conftest import TINY


def test_span_majority_on_known_spans():
    gt = torch.tensor([[0] * 6 + [1] * 4 + [2] * 2])          # L = 12
    t = torch.tensor([[[0.0], [0.5], [0.9]]])
    l = torch.tensor([[[0.3], [0.5], [0.1]]])
    # spans in steps: [0, 3.3] -> label 0; [5.5, 11] -> 1 (steps 5..11: one 0, four 1, two 2); [9.9, 11] -> 2
    assert span_majority(gt, t, l, 3).tolist() == [[0, 1, 2]]


def test_primitive_of_vocab_maps_sentences():
    m = primitive_of_vocab(["b text", "x", "a text"], {"a": "a text", "b": "b text"}, ["a", "b"])
    assert m.tolist() == [1, -1, 0]


def test_recovery_perfect_and_chance():
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.zeros(1, 8), "y": torch.tensor(0), "subaction": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])}

    t = torch.tensor([[[0.0], [0.6]]])
    l = torch.tensor([[[0.3], [0.4]]])
    right = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])            # token 0 -> vocab 0 -> primitive 0, token 1 -> 1
    fn = lambda x, y: (t.expand(len(x), -1, -1), l.expand(len(x), -1, -1), right.expand(len(x), -1, -1))  # noqa: E731
    rep = subaction_recovery(fn, DS(), torch.tensor([0, 1]), 2)
    assert rep["token_acc"] == 1.0 and rep["chance_uniform"] == 0.5 and rep["majority"] == 0.5
    assert rep["step_acc"] == 1.0 and rep["step_majority"] == 0.5 and rep["steps"] == 4 * 8
    swapped = subaction_recovery(fn, DS(), torch.tensor([1, 0]), 2)
    assert swapped["token_acc"] == 0.0 and swapped["step_acc"] == 0.0


def test_step_predictions_take_the_covering_token_nearest_its_centre():
    pred = torch.tensor([[7, 8, 9]])
    # spans over 11 steps (pos = step / 10): A [0, 0.6] centre 0.3; B [0.4, 0.6] centre 0.5; C [0.9, 1.0]
    t = torch.tensor([[[0.0], [0.4], [0.9]]])
    l = torch.tensor([[[0.6], [0.2], [0.1]]])
    # steps 0-3 only A; 4: A and B cover, A's centre (0.3) is nearer than B's (0.5)? |0.4-0.3| = |0.4-0.5|
    # -> argmin takes the first (A); 5, 6: B nearer; 7, 8: nobody covers, nearest centres C (0.95) vs
    # B (0.5): step 7 (0.7) -> B, step 8 (0.8) -> C; 9, 10: C
    assert step_predictions(pred, t, l, 11).tolist() == [[7, 7, 7, 7, 7, 8, 8, 8, 9, 9, 9]]


def test_synthetic_run_reports_recovery_for_teacher_and_student(tmp_path, text_cache):
    run_dir = tmp_path / "rec"
    distill.main(["--config", "configs/synthetic_smoke.yaml", *TINY, f"run_dir={run_dir}",
                  f"text.cache_dir={text_cache}", "train.baseline=false"])
    results = json.loads((run_dir / "results.json").read_text())
    for role in ("teacher", "student"):
        rec = results[role]["subaction_recovery"]
        assert 0.0 <= rec["token_acc"] <= 1.0 and 0.0 <= rec["step_acc"] <= 1.0 and 0 < rec["majority"] < 1
        assert rec["chance_uniform"] == pytest.approx(0.1)
        assert rec["tokens"] == results["data"]["windows"]["test"] * 3 * 16      # C * N tokens per window


def ordered_sub_kl_distiller(text_cache):
    """A CNN student of an ordered-alignment teacher (tiny, untrained) distilling its label-free scores."""
    from kd.config import load_config
    from kd.data import build_splits
    from kd.pipeline import text_tensors
    from kd.stages import build_distiller
    from teachers import build_teacher
    cfg = load_config("configs/synthetic_smoke.yaml", [*TINY, f"text.cache_dir={text_cache}", *ORDERED_SUB_KL])
    splits = build_splits(cfg.data)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, splits.num_channels, len(splits.class_names), text_tensors(cfg, splits)[0])
    teacher.eval().requires_grad_(False)
    return build_distiller(cfg, splits, teacher), teacher, splits


ORDERED_SUB_KL = ["teacher.alignment.target=ordered", "kd.sub_kl.weight=1.0", "kd.sub_kl.source=action"]


def test_sub_kl_gradient_reaches_the_head_adapter_and_student_only(text_cache):
    """sub_kl trains the student's sub-action head, the token adapter under it and the student network;
    never the teacher, the frozen codebook or the frozen action decoder."""
    from kd.stages import sample_batch
    distiller, teacher, splits = ordered_sub_kl_distiller(text_cache)
    batch = sample_batch(splits.train, 4)
    with torch.no_grad():
        t_out = teacher.teach(batch["x"], batch["y"])
    s_out, _ = distiller.train().student_forward(batch["x"], None)
    assert s_out.sub_logits.shape == t_out.sub_logits.shape                   # (B, C*N, M): one per teacher token
    distiller.losses["sub_kl"](s_out, t_out)["sub_kl"].backward()
    grad = lambda m: [p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()]  # noqa: E731
    assert all(grad(distiller.sub_head)) and all(grad(distiller.adapter.proj))
    assert any(grad(distiller.student))
    assert not any(grad(distiller.tokens)) and not any(grad(teacher))


def test_synthetic_run_reports_the_recovery_of_the_distilled_sub_action_head(tmp_path, text_cache):
    run_dir = tmp_path / "sub"
    distill.main(["--config", "configs/synthetic_smoke.yaml", *TINY, f"run_dir={run_dir}",
                  f"text.cache_dir={text_cache}", "train.baseline=false", *ORDERED_SUB_KL,
                  "teacher.alignment.scores_from_step=1"])
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("subaction_recovery", "subaction_recovery_scores"):            # the action decoder, the head
        rec = results["student"][key]
        assert rec["tokens"] == results["data"]["windows"]["test"] * 3 * 16 and 0.0 <= rec["token_acc"] <= 1.0
    assert "subaction_recovery_scores" in results["teacher"]                   # what the head was taught
    for role in ("teacher", "student"):                                         # for choosing settings
        val = results[role]["subaction_recovery_scores_val"]
        assert val["tokens"] == results["data"]["windows"]["val"] * 3 * 16 and 0.0 <= val["token_acc"] <= 1.0
    assert 0.0 <= results["student"]["sub_agreement_val"] <= 1.0


def test_argmax_agreement_counts_tokens_with_the_same_top_entry():
    from kd.recovery import argmax_agreement

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"x": torch.tensor([float(i)]), "y": torch.tensor(0)}
    teacher = lambda x, y: torch.eye(4)[[0, 1]].expand(len(x), 2, 4)            # noqa: E731  tops 0, 1
    assert argmax_agreement(lambda x: teacher(x, None) * 2, teacher, DS()) == 1.0
    # the second token's top moves to entry 3 for window 2 only: 5 of 6 tokens agree
    student = lambda x: torch.stack([teacher(x[i:i + 1], None)[0] + (x[i, 0] == 2) * torch.tensor(  # noqa: E731
        [[0.0, 0, 0, 0], [0, 0, 0, 5]]) for i in range(len(x))])
    assert argmax_agreement(student, teacher, DS(), batch_size=2) == pytest.approx(5 / 6)


def test_alignment_rhythm_counts_the_periods_of_a_window_and_ranks_like_spearman():
    """experiments.alignment_rhythm: a window of k sine periods (on every channel, different phases) has
    k repetitions; the rank correlation is +1 / -1 for monotone relations, ties ranked by their mean."""
    import numpy as np
    from experiments.alignment_rhythm import rank_corr, repetitions
    T = 512
    tau = np.arange(T) / T
    for k in (2, 5, 9):
        x = np.stack([np.sin(2 * np.pi * k * tau + p) for p in (0.0, 1.0, 2.0)])
        assert abs(repetitions(x) - k) < 0.1 * k
    assert np.isnan(repetitions(np.stack([tau, tau ** 2])))                  # a ramp never repeats
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert rank_corr(a, a ** 3) == pytest.approx(1.0) and rank_corr(a, -a) == pytest.approx(-1.0)
    b = np.array([1.0, 1.0, 2.0, 3.0, 3.0])                                  # ties: scipy.stats.spearmanr 0.9487
    assert rank_corr(a, b) == pytest.approx(0.94868330, abs=1e-6)
    assert np.isnan(rank_corr(a, np.ones(5)))


def test_span_majority_and_recovery_leave_out_steps_without_truth():
    """-1 steps count nowhere: a span over only such steps has no truth, a perfect reader of the rest scores 1;
    brute force over random spans and labels for the majority."""
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(-1, 3, (5, 20), generator=g)
    t = torch.rand(5, 7, 1, generator=g) * 0.9
    l = torch.rand(5, 7, 1, generator=g) * 0.3
    got = span_majority(gt, t, l, 3)
    for b in range(5):
        for k in range(7):
            lo, hi = float(t[b, k] * 19), float((t[b, k] + l[b, k]).clamp(max=1) * 19)
            steps = [gt[b, s] for s in range(20) if lo // 1 <= s <= -(-hi // 1) and gt[b, s] >= 0]
            want = max(range(3), key=lambda c: (sum(int(v == c) for v in steps), -c)) if steps else -1
            assert int(got[b, k]) == want
    assert span_majority(torch.full((1, 8), -1), torch.zeros(1, 1, 1), torch.ones(1, 1, 1), 2).tolist() == [[-1]]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"x": torch.zeros(1, 8), "y": torch.tensor(0), "subaction": torch.tensor([-1, -1, 0, 0, 1, 1, -1, -1])}

    t, l = torch.tensor([[[0.0], [0.5]]]), torch.tensor([[[0.5], [0.5]]])
    fn = lambda x, y: (t.expand(len(x), -1, -1), l.expand(len(x), -1, -1),  # noqa: E731
                       torch.tensor([[[5.0, 0.0], [0.0, 5.0]]]).expand(len(x), -1, -1))
    rep = subaction_recovery(fn, DS(), torch.tensor([0, 1]), 2)
    assert rep["step_acc"] == 1.0 and rep["steps"] == 2 * 4 and rep["token_acc"] == 1.0


def test_a_students_scores_decoded_given_the_class_follow_the_class_transcript_in_order():
    """given_class_tokens: the class's states only (a vocabulary entry outside the transcript never appears even
    where it scores highest), in transcript order, each token taking its bin's state; brute force over every
    monotone path of an anchored chain (first sub-action to last)."""
    import itertools
    import math
    from kd.recovery import Transcripts, given_class_tokens
    N, M = 6, 5
    teacher = Transcripts(torch.tensor([[3, 1, 4], [0, 2, 0]]), torch.tensor([[True, True, True], [True, True, False]]),
                          n_bins=N, p_stay=0.7, chain="once")
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 2 * N, M, generator=g) * 2
    scores[..., 2] += 10                                      # entry 2 is everyone's argmax, but not class 0's
    t = (torch.arange(2 * N) % N).float().div(N).view(1, -1, 1).expand(2, -1, -1)   # two tokens per bin
    l = torch.full_like(t, 1.0 / N - 1e-3)
    fn = given_class_tokens(lambda x, y: (t, l, scores), teacher)
    _, _, onehot = fn(torch.zeros(2, 1, 8), torch.tensor([0, 1]))
    voc = onehot.argmax(-1)                                   # (2, 2N)
    for b, y in enumerate((0, 1)):
        ids = teacher.class_index[y][teacher.class_mask[y]].tolist()
        lp = scores[b].log_softmax(-1)[:, ids]                # (2N, K)
        emit = torch.stack([lp[[n, n + N]].mean(0) for n in range(N)])      # bin n holds tokens n and n + N
        best, best_path = -math.inf, None
        for path in itertools.product(range(len(ids)), repeat=N):
            if any(b2 - a2 not in (0, 1) for a2, b2 in zip(path, path[1:])) or path[0] or path[-1] != len(ids) - 1:
                continue
            s = sum(float(emit[n, k]) for n, k in enumerate(path)) + sum(
                math.log(0.7) if a2 == b2 else math.log(0.3) for a2, b2 in zip(path, path[1:]))
            if s > best:
                best, best_path = s, path
        want = [ids[best_path[n % N]] for n in range(2 * N)]
        assert voc[b].tolist() == want
    assert 2 not in voc[0].tolist()


def test_hapt_vocabulary_maps_posture_sentences_to_their_posture_and_movements_to_transition():
    from kd.data.hapt import ACTIVITIES, EPISODE_TRUTH
    from kd.recovery import hapt_vocab_map
    from kd.text.descriptions import default_file, load_descriptions
    d = load_descriptions(default_file("hapt"), ACTIVITIES)
    stand_to_sit = d.subactions[ACTIVITIES.index("STAND_TO_SIT")]
    m = hapt_vocab_map(stand_to_sit, default_file("hapt")).tolist()
    T = EPISODE_TRUTH.index
    assert m == [T("STANDING"), T("TRANSITION"), T("TRANSITION"), T("TRANSITION"), T("SITTING")]
    lying = d.subactions[ACTIVITIES.index("LAYING")]
    assert hapt_vocab_map(lying, default_file("hapt")).tolist() == [T("LAYING")] * len(lying)


def test_reordered_transcripts_reverse_or_permute_the_named_classes_only(tmp_path):
    from experiments.hapt_subactions import reordered_file
    from kd.data.hapt import ACTIVITIES
    from kd.text.descriptions import default_file, load_descriptions
    src = load_descriptions(default_file("hapt"), ACTIVITIES)
    for how in ("reversed", "shuffled"):
        got = load_descriptions(reordered_file(default_file("hapt"), tmp_path / f"{how}.yaml", how, list(ACTIVITIES[6:])),
                                ACTIVITIES)
        assert got.labels == src.labels
        for name, a, b in zip(ACTIVITIES, src.subactions, got.subactions):
            if name in ACTIVITIES[6:]:
                assert sorted(a) == sorted(b) and a != b and (how != "reversed" or b == a[::-1])
            else:
                assert a == b


def test_the_supervised_ceiling_reads_what_the_teachers_inputs_carry(tmp_path, text_cache):
    """A reader trained on the true steps of the training episodes, over an untrained teacher's bin features,
    names the held-out steps (postures differ in their gravity offset) well above the majority guess (0.44 here;
    the reader reaches 0.62 and 0.87 with teachers of seeds 0 and 1: four test episodes are few)."""
    from kd.config import load_config
    from kd.data import build_splits
    from kd.data.hapt import EPISODE_TRUTH
    from kd.pipeline import text_tensors
    from kd.recovery import majority_guess, supervised_ceiling
    from teachers import build_teacher
    from tests.conftest import vq_overrides
    from tests.test_hapt import write_episode_folder
    root = write_episode_folder(tmp_path / "hapt")
    cfg = load_config("configs/hapt/episodes_subactions.yaml",
                      [f"data.hapt.root={root}", "data.hapt.window=200", "data.length=64", "data.test_subjects=[1]",
                       "data.val_subjects=[2]", f"text.cache_dir={text_cache}", *vq_overrides("teacher")])
    splits = build_splits(cfg.data)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, splits.num_channels, len(splits.class_names), text_tensors(cfg, splits)[0])
    P = len(EPISODE_TRUTH)
    majority = majority_guess(splits.train, splits.test, P)
    ceiling = supervised_ceiling(teacher, splits, P, epochs=150)
    assert ceiling["step_acc"] >= majority + 0.15, (ceiling, majority)
    assert ceiling["epoch"] % 25 == 0 and ceiling["steps"] == 4 * 64


def test_cycle_check_asks_two_ordered_passes_at_the_windows_own_period():
    """A 3-phase path over 24 bins advancing every 2 bins makes 11 advances (3.7 cycles, cycle 0.27 of the
    window): it passes for a window of 3.7 repetitions, fails for 2 (cycle 0.5) and when it never runs through
    the phases twice; no period (nan) fails."""
    from experiments.alignment_rhythm import cycle_check
    path = np.arange(24) // 2 % 3
    assert cycle_check(path, 3, 11 / 3) and cycle_check(path, 3, 11 / 3 * 1.2)
    assert not cycle_check(path, 3, 2.0) and not cycle_check(path, 3, float("nan"))
    assert not cycle_check(np.arange(24) // 6 % 3, 3, 1.0)                      # 3 advances: one pass
    assert not cycle_check(np.arange(24) // 4 % 3, 3, 2.0)                     # 5 advances: under two passes
    assert cycle_check(np.arange(24) // 3 % 3, 3, 2.4) and not cycle_check(np.arange(24) // 3 % 3, 3, 3.5)  # 7


def test_adjusted_rand_is_one_for_the_same_partition_and_matches_the_pair_count_formula():
    from experiments.alignment_rhythm import adjusted_rand
    g = np.random.default_rng(0)
    a = g.integers(0, 4, 200)
    assert adjusted_rand(a, (a + 2) % 4) == pytest.approx(1.0)                  # renamed groups: the same
    b = g.integers(0, 3, 200)
    # brute force over every pair of items: agreement beyond chance as in Hubert & Arabie
    same_a = a[:, None] == a[None, :]
    same_b = b[:, None] == b[None, :]
    iu = np.triu_indices(200, 1)
    n11, na, nb, n = (same_a & same_b)[iu].sum(), same_a[iu].sum(), same_b[iu].sum(), len(iu[0])
    expected = na * nb / n
    assert adjusted_rand(a, b) == pytest.approx((n11 - expected) / ((na + nb) / 2 - expected))
    assert abs(adjusted_rand(a, b)) < 0.05


def test_alignment_levels_let_the_scores_see_the_level_the_normalised_window_hides(text_cache):
    """Each window is z-normalised before tokenising, so adding a constant to it leaves every feature the scores
    read unchanged; with alignment.levels the tokens' mean in the input's units (two more numbers per channel)
    moves by exactly that constant."""
    from kd.config import load_config
    from kd.data import build_splits
    from kd.pipeline import text_tensors
    from teachers import build_teacher
    x = None
    for levels in (False, True):
        cfg = load_config("configs/synthetic_smoke.yaml", [*TINY, f"text.cache_dir={text_cache}", *ORDERED_SUB_KL,
                                                            f"teacher.alignment.levels={levels}",
                                                            "teacher.alignment.context=0"])
        splits = build_splits(cfg.data)
        torch.manual_seed(0)
        teacher = build_teacher(cfg.teacher, splits.num_channels, len(splits.class_names),
                                text_tensors(cfg, splits)[0]).eval()
        x = torch.stack([splits.test[i]["x"] for i in range(4)]) if x is None else x
        with torch.no_grad():
            feats = [teacher.bin_features(teacher(v, keys="vocab", reconstruct=False), 4)[0] for v in (x, x + 5.0)]
        C, W = splits.num_channels, teacher.cfg.dim_code + 2 + 2 * levels
        assert feats[0].shape[-1] == C * W
        diff = (feats[1] - feats[0]).view(4, -1, C, W)
        assert diff[..., :W - 2 * levels].abs().max() < 1e-3                 # codes, normalised mean and std
        if levels:
            filled = feats[0].view(4, -1, C, W)[..., W - 2].ne(0)             # bins holding tokens
            torch.testing.assert_close(diff[..., W - 2][filled], torch.full_like(diff[..., W - 2][filled], 5.0),
                                       atol=1e-3, rtol=0)
