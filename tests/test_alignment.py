"""Ordered alignment: forward-backward posteriors and likelihood, and Viterbi, against brute-force
enumeration of every state path on tiny chains (cyclic and not, padded states); exact decoding of
a known sequence from clean emissions; no gradient through the posteriors."""
import itertools
import math

import pytest
import torch

from teachers.alignment import chain_posteriors, chain_viterbi


def step_weight(s, s2, k, cyclic, p_stay):
    """Probability of moving s -> s2 in a chain of k states (both moves count where they coincide)."""
    w = p_stay if s2 == s else 0.0
    nxt = s + 1 if s + 1 < k else (0 if cyclic else None)
    return w + ((1 - p_stay) if s2 == nxt else 0.0)


def brute(log_emit, k, cyclic, p_stay, anchored=False):
    """(posteriors [N, k], log-likelihood, best path, best score) by enumerating all k^N paths (anchored: only
    those from state 0 to state k - 1, which start with probability 1)."""
    N = log_emit.shape[0]
    post, total, best, best_score = torch.zeros(N, k, dtype=torch.float64), 0.0, None, -math.inf
    for path in itertools.product(range(k), repeat=N):
        if anchored and (path[0] != 0 or path[-1] != k - 1):
            continue
        w = (0.0 if anchored else math.log(1 / k)) + sum(float(log_emit[t, s]) for t, s in enumerate(path))
        steps = [step_weight(a, b, k, cyclic, p_stay) for a, b in zip(path, path[1:])]
        if any(s == 0 for s in steps):
            continue
        w += sum(math.log(s) for s in steps)
        p = math.exp(w)
        total += p
        for t, s in enumerate(path):
            post[t, s] += p
        if w > best_score:
            best, best_score = path, w
    return post / total, math.log(total), list(best), best_score


@pytest.mark.parametrize("cyclic, anchored", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("p_stay", [0.5, 0.8])
def test_forward_backward_and_viterbi_equal_enumeration(cyclic, anchored, p_stay):
    g = torch.Generator().manual_seed(int(cyclic) * 10 + int(anchored) * 100 + int(p_stay * 10))
    K, N = 4, 6
    n_states = torch.tensor([4, 3, 1, 2])                       # padded states in three sequences
    log_emit = torch.randn(len(n_states), N, K, generator=g, dtype=torch.float64) * 2
    post, loglik = chain_posteriors(log_emit, n_states, cyclic, p_stay, anchored)
    path, score = chain_viterbi(log_emit, n_states, cyclic, p_stay, anchored)
    for i, k in enumerate(n_states.tolist()):
        b_post, b_ll, b_path, b_score = brute(log_emit[i, :, :k], k, cyclic, p_stay, anchored)
        assert torch.allclose(post[i, :, :k].double(), b_post, atol=1e-5)
        assert (post[i, :, k:] == 0).all()
        assert loglik[i].item() == pytest.approx(b_ll, abs=1e-4)
        assert path[i].tolist() == b_path and score[i].item() == pytest.approx(b_score, abs=1e-4)


def test_an_anchored_chain_runs_through_every_state_even_where_emissions_favour_one():
    """anchored: first state to last in order whatever the emissions (here all favour state 1); a chain with
    fewer positions than states, or a cyclic anchored one, is an error."""
    log_emit = torch.zeros(1, 8, 3)
    log_emit[..., 1] = 5.0
    path, _ = chain_viterbi(log_emit, torch.tensor([3]), cyclic=False, anchored=True)
    assert path[0, 0] == 0 and path[0, -1] == 2 and (path[0].diff() >= 0).all()
    post, _ = chain_posteriors(log_emit, torch.tensor([3]), cyclic=False, anchored=True)
    assert post[0, 0, 0] == pytest.approx(1.0) and post[0, -1, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="anchored"):
        chain_viterbi(log_emit[:, :2], torch.tensor([3]), cyclic=False, anchored=True)
    with pytest.raises(ValueError, match="anchored"):
        chain_posteriors(log_emit, torch.tensor([3]), cyclic=True, anchored=True)


def test_clean_emissions_decode_a_known_cyclic_sequence():
    K, truth = 3, [1, 1, 2, 0, 0, 0, 1, 2, 2, 0]                # starts mid-cycle and wraps twice
    log_emit = torch.full((1, len(truth), K), -8.0)
    log_emit[0, torch.arange(len(truth)), torch.tensor(truth)] = 0.0
    path, _ = chain_viterbi(log_emit, torch.tensor([K]))
    post, _ = chain_posteriors(log_emit, torch.tensor([K]))
    assert path[0].tolist() == truth and post[0].argmax(-1).tolist() == truth
    # the order is enforced: emissions that say 0 -> 2 (a skip) cannot be followed exactly
    skip = torch.full((1, 4, K), -8.0)
    skip[0, torch.arange(4), torch.tensor([0, 0, 2, 2])] = 0.0
    assert chain_viterbi(skip, torch.tensor([K]))[0][0].tolist() != [0, 0, 2, 2]


def test_posteriors_carry_no_gradient_and_sum_to_one():
    log_emit = torch.randn(5, 7, 3, requires_grad=True).log_softmax(-1)
    post, loglik = chain_posteriors(log_emit, torch.tensor([3, 3, 2, 1, 3]))
    assert not post.requires_grad and not loglik.requires_grad
    assert torch.allclose(post.sum(-1), torch.ones(5, 7), atol=1e-5)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match=r"n_states must be \[2\] with values in 1..3"):
        chain_posteriors(torch.zeros(2, 4, 3), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="p_stay=1.0 must lie in"):
        chain_viterbi(torch.zeros(1, 4, 3), torch.tensor([3]), p_stay=1.0)


# ----------------------------------------------------------------------------- learning from the order
CYCLES = torch.tensor([[0, 1, 2, 3], [2, 4, 0, 5], [5, 3, 1, 4], [1, 0, 4, 2]])   # 4 classes over 6 sub-actions
P, D, N = 6, 16, 12


def cyclic_paths(n, g, cycles):
    """n windows of N steps: a random class, a random start in its 4-step cycle, advancing with
    probability 0.35 per step. -> (class (n,), sub-action at every step (n, N))."""
    y = torch.randint(0, len(cycles), (n,), generator=g)
    truth = torch.empty(n, N, dtype=torch.long)
    for i in range(n):
        state = int(torch.randint(0, 4, (1,), generator=g))
        for t in range(N):
            truth[i, t] = cycles[y[i], state]
            state = (state + int(torch.rand(1, generator=g) < 0.35)) % 4
    return y, truth


def token_windows(n, g, protos, noise=0.8, cycles=CYCLES):
    """cyclic_paths whose tokens' features are their sub-action's prototype plus noise.
    -> (features, class, truth)."""
    y, truth = cyclic_paths(n, g, cycles)
    return protos[truth] + noise * torch.randn(n, N, D, generator=g), y, truth


def score_targets(scores, centre, ids, ordered):
    """The E-step on per-token scores (S, N, M) of tokens out of time order: chain posteriors over the class's
    ordered entries ids (S, K) (or their set), tokens ordered by centre (S, N) -> targets (S, N, M)."""
    from teachers.alignment import state_posteriors, tokens_to_vocabulary
    order = centre.argsort(dim=1)
    log_p = scores.detach().log_softmax(-1).gather(1, order[..., None].expand_as(scores))
    emit = log_p.gather(2, ids[:, None, :].expand(-1, scores.shape[1], -1))
    post = state_posteriors(emit, torch.full((len(ids),), ids.shape[1]), ordered, p_stay=0.65)
    return tokens_to_vocabulary(post.gather(1, order.argsort(1)[..., None].expand_as(post)), ids, scores.shape[-1])


def learn_scores(ordered: bool, seed: int = 0, steps: int = 120, warm: int = 30) -> float:
    """Train token/text projections on E-step targets only (class known, sub-actions never shown);
    -> held-out token accuracy of the label-free argmax over the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    protos, text = torch.randn(P, D, generator=g), torch.randn(P, 8, generator=g)   # text says nothing of shape
    torch.manual_seed(seed)
    tok, txt = torch.nn.Linear(D, 16), torch.nn.Linear(8, 16)
    opt = torch.optim.Adam([*tok.parameters(), *txt.parameters()], lr=1e-2)

    def scores(f):
        return torch.nn.functional.normalize(tok(f), dim=-1) @ torch.nn.functional.normalize(txt(text), dim=-1).t() / 0.1

    for step in range(steps):
        f, y, _ = token_windows(64, g, protos)
        shuffle = torch.randperm(N, generator=g)                     # tokens arrive out of time order;
        f, centre = f[:, shuffle], torch.arange(N).float()[shuffle].expand(64, N)   # their centres give it
        s = scores(f)
        p = score_targets(s, centre, CYCLES[y], ordered and step >= warm)
        loss = -(p * s.log_softmax(-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    f, _, truth = token_windows(400, torch.Generator().manual_seed(99), protos)
    with torch.no_grad():
        return (scores(f).argmax(-1) == truth).float().mean().item()


def test_order_teaches_which_sub_action_each_token_is():
    # majority chance here is about 1 / 6 per token; the set of a class's sub-actions alone leaves
    # the within-class identity open, the order pins it down
    ordered, set_only = learn_scores(True), learn_scores(False)
    assert ordered >= 0.95 and set_only <= 0.8, (ordered, set_only)

SHARED = torch.tensor([[0, 1, 2, 3], [0, 4, 5, 1], [0, 3, 6, 4], [0, 2, 5, 6]])   # sub-action 0 in every class


# ----------------------------------------------------------------------------- emissions from shape codes
def test_pool_bins_sums_each_bins_tokens_and_leaves_empty_bins_uninformative():
    from teachers.alignment import pool_bins, time_bins
    centre = torch.tensor([[0.05, 0.1, 0.6, 0.99, 1.0]])
    bins = time_bins(centre, 4)
    assert bins.tolist() == [[0, 0, 2, 3, 3]]
    emit = torch.arange(10.0).view(1, 5, 2)
    pooled = pool_bins(emit, bins, 4)
    assert pooled.tolist() == [[[2.0, 4.0], [0.0, 0.0], [4.0, 5.0], [14.0, 16.0]]]


def code_windows(n, g, flip):
    """cyclic_paths over the SHARED cycles, observed as codes on 2 channels.
    Channel 0 emits code m of sub-action m (w.p. 0.7, else a random code of 12); channel 1 emits code
    flip[m], where flip maps two sub-actions to one code, so that channel alone cannot tell them apart.
    -> (codes (n, 2, N), class (n,), truth (n, N))."""
    y, truth = cyclic_paths(n, g, SHARED)
    clean = torch.stack([truth, flip[truth]], dim=1)                                  # (n, 2, N)
    noise = torch.rand(clean.shape, generator=g) > 0.7
    return torch.where(noise, torch.randint(0, 12, clean.shape, generator=g), clean), y, truth


def learn_code_table(ordered: bool, steps: int = 60, seed: int = 0):
    """Online EM as MMVQShape runs it (sub-actions never shown), from an empty
    table. -> held-out accuracy of (the Viterbi path given the class, the label-free argmax over the learned
    table, the same argmax over the true table: the best any table can do without the class)."""
    from teachers.alignment import CodeEmissions, pool_bins, state_posteriors
    g = torch.Generator().manual_seed(seed)
    flip = torch.tensor([7, 8, 9, 10, 11, 7, 6])      # channel 1 confuses sub-actions 0 and 5
    table = CodeEmissions(2, 7, 12, decay=0.9, smoothing=0.1)
    bins = torch.arange(N).repeat(2)[None]                                             # channel-major tokens
    for _ in range(steps):
        codes, y, _ = code_windows(64, g, flip)
        emit = pool_bins(table.token_emissions(codes, SHARED[y]).flatten(1, 2), bins.expand(64, -1), N)
        post = state_posteriors(emit, torch.full((64,), 4), ordered, p_stay=0.65)     # (64, N, 4)
        table.update(codes, SHARED[y], post[:, None].expand(-1, 2, -1, -1))
    codes, y, truth = code_windows(300, torch.Generator().manual_seed(99), flip)
    emit = pool_bins(table.token_emissions(codes, SHARED[y]).flatten(1, 2), bins.expand(300, -1), N)
    path, _ = chain_viterbi(emit, torch.full((300,), 4), p_stay=0.65)
    viterbi = (SHARED[y].gather(1, path) == truth).float().mean().item()
    def label_free(log_t):                                                             # (2, 7, 12) -> accuracy
        return ((log_t[0][:, codes[:, 0]] + log_t[1][:, codes[:, 1]]).argmax(0) == truth).float().mean().item()
    true_t = torch.full((2, 7, 12), 0.3 / 12)
    true_t[0, torch.arange(7), torch.arange(7)] += 0.7
    true_t[1, torch.arange(7), flip] += 0.7
    return viterbi, label_free(table.log_table()), label_free(true_t.log())


def test_online_em_over_codes_learns_which_sub_action_each_code_is():
    # chance is about 1/4 given the class, 1/7 without; the channels pool per time bin, so the
    # code channel 1 shares between sub-actions 0 and 5 is resolved by channel 0
    viterbi, free, best = learn_code_table(ordered=True)
    assert viterbi >= 0.9 and free >= best - 0.02 and best > 0.75, (viterbi, free, best)


def test_code_table_normalises_over_codes_so_no_sub_action_absorbs_a_window():
    from teachers.alignment import CodeEmissions
    table = CodeEmissions(1, 3, 4, decay=0.5, smoothing=0.1)
    post = torch.zeros(1, 1, 2, 3)
    post[0, 0, :, 1] = 1.0                                    # sub-action 1 took both tokens (codes 0 and 2)
    table.update(torch.tensor([[[0, 2]]]), torch.tensor([[0, 1, 2]]), post)
    p = table.log_table().exp()
    assert torch.allclose(p.sum(-1), torch.ones(1, 3))
    assert p[0, 1].tolist() == pytest.approx([1.1 / 2.4, 0.1 / 2.4, 1.1 / 2.4, 0.1 / 2.4])   # split, not 1 each
    assert torch.allclose(p[0, 0], torch.full((4,), 0.25))                              # unseen: uniform
    table.update(torch.tensor([[[3, 3]]]), torch.tensor([[0, 1, 2]]), post)           # counts decay by half
    assert table.counts[0, 1].tolist() == pytest.approx([0.5, 0.0, 0.5, 2.0])
