"""Text side: encoder convention, lazy load and cache; description validation; vocabulary de-duplication;
and the text bank."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from kd.config import TextConfig  # noqa: E402
from kd.data.synthetic import CLASS_NAMES, CLASSES, PRIMITIVES  # noqa: E402
from kd.text import (TextEncoder, TextError, TextModelError, build_text_bank,  # noqa: E402
                     build_vocabulary, default_file, load_descriptions, read_class_names)

WATCH = ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
SENTENCES = ["The wrist swings forward.",
             "The relaxed arm hangs at the side of the body while the shoulder blades squeeze together slowly.",
             "The wrist swings forward."]


def refuse_load(*args, **kwargs):
    raise AssertionError("the text model was loaded although every text was cached")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("text_cache")


@pytest.fixture(scope="module")
def encoded(cache_dir):
    """(encoder, embeddings) of SENTENCES, computed fresh into an empty cache."""
    enc = TextEncoder(cache_dir=str(cache_dir))
    assert not enc.loaded                                        # lazy: nothing loaded at construction
    return enc, enc.encode(SENTENCES)


@pytest.fixture(scope="module")
def uncached():
    return TextEncoder(cache_dir=None)


# ----------------------------------------------------------------------------- encoder
def test_encoder_shape_unit_norm_and_identical_texts(encoded):
    enc, emb = encoded
    assert emb.shape == (3, 384) and emb.dtype == torch.float32 and enc.dim == 384 and enc.loaded
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[2])                           # identical texts -> identical embeddings
    assert F.cosine_similarity(emb[0], emb[1], dim=0) < 0.9


def test_padding_is_masked(uncached):
    """A short sentence batched with a long one (padded) embeds as it does alone."""
    together = uncached.encode(SENTENCES[:2])
    alone = torch.cat([uncached.encode([s]) for s in SENTENCES[:2]])
    assert torch.allclose(together, alone, atol=1e-5)


def test_matches_sentence_transformers(encoded):
    enc, emb = encoded
    from sentence_transformers import SentenceTransformer
    try:
        st = SentenceTransformer(str(enc.model_dir), device="cpu", local_files_only=True)
    except (OSError, ValueError) as err:
        pytest.skip(f"sentence-transformers cannot load {enc.model_dir} offline: {err}")
    ref = torch.as_tensor(st.encode(SENTENCES[:2], convert_to_numpy=True))
    assert torch.allclose(emb[:2], ref, atol=1e-5)


def test_cache_hit_does_not_load_model(encoded, cache_dir, monkeypatch):
    """A new encoder on the same cache (as in a new process) answers from disk, bit-identical."""
    _, fresh = encoded
    import transformers
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse_load)
    again = TextEncoder(cache_dir=str(cache_dir))
    assert torch.equal(again.encode(list(reversed(SENTENCES))), fresh.flip(0))
    assert again._model is None and again._tokenizer is None


def test_cached_equals_fresh_and_partial_hit(encoded, cache_dir, uncached):
    _, cached = encoded
    assert torch.allclose(uncached.encode(SENTENCES), cached, atol=1e-5)
    enc = TextEncoder(cache_dir=str(cache_dir))
    new = "The forearm rotates inward toward the belly."
    out = enc.encode([SENTENCES[0], new])                       # one miss: loads the model, caches the new text
    assert enc.loaded and torch.equal(out[0], cached[0])
    assert torch.allclose(out[1], uncached.encode([new])[0], atol=1e-5)
    assert torch.equal(TextEncoder(cache_dir=str(cache_dir)).encode([new]), out[1:])
    assert [p.name for p in cache_dir.iterdir()] == [f"{enc.identity}.safetensors"]   # no temp file left


def test_cache_key_depends_on_max_length(encoded):
    enc, _ = encoded
    assert TextEncoder(max_length=64, cache_dir=None).identity != enc.identity


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "bert-base-uncased"
    with pytest.raises(TextModelError, match="local Hugging Face model directory") as err:
        TextEncoder(model=str(missing))
    assert str(missing) in str(err.value) and "all-MiniLM-L6-v2" in str(err.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TextModelError, match="no weights"):
        TextEncoder(model=str(tmp_path))


@pytest.mark.parametrize("texts, msg", [
    ([], "empty list"), ("one sentence", "list of strings"), (["ok", 3], "item 1 is not a string but int"),
    (["ok", "  "], "item 1 is a blank string")])
def test_bad_encode_input(uncached, texts, msg):
    with pytest.raises(TextError, match=msg):
        uncached.encode(texts)


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_dedup_on_hand_made_vectors():
    e = torch.eye(4)
    near = F.normalize(e[0] + 0.1 * e[1], dim=0)                  # cos with e0 = 0.995
    far = F.normalize(e[0] + 0.6 * e[1], dim=0)                   # cos with e0 = 0.857
    per_class = [torch.stack([e[0], e[1]]), torch.stack([e[0].clone(), near, far]), torch.stack([2 * e[2]])]
    texts = [["a", "b"], ["a'", "a~", "af"], ["c"]]
    v = build_vocabulary(per_class, 0.95, texts)
    assert v.M == 4 and v.texts == ["a", "b", "af", "c"]
    assert v.class_index.tolist() == [[0, 1, -1], [0, 0, 2], [3, -1, -1]]
    assert v.class_mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert torch.equal(v.emb, torch.stack([e[0], e[1], far, 2 * e[2]]))   # first occurrences, as given
    assert build_vocabulary(per_class, 0.85, texts).class_index.tolist() == [[0, 1, -1], [0, 0, 0], [2, -1, -1]]
    assert build_vocabulary(per_class, 0.95).texts[2] == "class 1, sub-action 2"
    assert build_vocabulary(per_class, 1.0).class_index[1].tolist() == [0, 2, 3]   # only the exact duplicate


def test_vocabulary_joins_first_entry_not_best():
    e = torch.eye(3)
    u = F.normalize(e[0] + 0.8 * e[1], dim=0)                     # cos(e0, u) = 0.781 < 0.8: two entries
    w = F.normalize(e[0] + 0.4 * e[1], dim=0)                     # cos(w, e0) = 0.928, cos(w, u) = 0.957
    assert F.cosine_similarity(w, u, dim=0) > F.cosine_similarity(w, e[0], dim=0) > 0.8
    v = build_vocabulary([torch.stack([e[0], u]), torch.stack([w])], 0.8)
    assert v.M == 2 and v.class_index.tolist() == [[0, 1], [0, -1]]


@pytest.mark.parametrize("args, msg", [
    (([torch.eye(2)], 0.0), r"\(0, 1\]"), (([torch.eye(2)], 1.5), r"\(0, 1\]"),
    (([torch.eye(2), torch.eye(3)], 0.9), "differ in width"), (([torch.empty(0, 4)], 0.9), "non-empty"),
    (([torch.eye(2)], 0.9, [["a"]]), "differ in count")])
def test_vocabulary_bad_input(args, msg):
    with pytest.raises(TextError, match=msg):
        build_vocabulary(*args)


# ----------------------------------------------------------------------------- real files
@pytest.mark.parametrize("threshold", [TextConfig().dedup_threshold, 0.9])
def test_synthetic_vocabulary_is_one_entry_per_primitive(cache_dir, threshold):
    bank = build_text_bank(TextConfig(cache_dir=str(cache_dir), dedup_threshold=threshold), CLASS_NAMES, "synthetic")
    prim = bank.descriptions.primitives
    assert list(prim) == PRIMITIVES and bank.M == 10
    for c, name in enumerate(CLASS_NAMES):                        # every entry maps back to its primitive
        assert [bank.vocab_texts[i] for i in bank.class_index[c]] == [prim[p] for p in CLASSES[name]]


def test_watch_bank(cache_dir):
    cfg = OmegaConf.structured(TextConfig(cache_dir=str(cache_dir)))    # the pipeline passes an OmegaConf node
    bank = build_text_bank(cfg, WATCH, "watch")
    assert bank.label_emb.shape == (7, 384) and bank.dim == 384 and bank.class_names == WATCH
    assert len(bank.sub_emb_per_class) == 7 and all(6 <= len(s) <= 8 for s in bank.sub_emb_per_class)
    K = max(len(s) for s in bank.sub_emb_per_class)
    assert bank.class_index.shape == bank.class_mask.shape == (7, K) and bank.vocab_emb.shape == (bank.M, 384)
    assert 12 <= bank.M < sum(len(s) for s in bank.sub_emb_per_class)   # shared phases merged
    assert torch.equal(bank.class_index < 0, ~bank.class_mask)
    for c, subs in enumerate(bank.sub_emb_per_class):             # each sub-action sits with its entry
        cos = F.cosine_similarity(subs, bank.vocab_emb[bank.class_index[c, :len(subs)]], dim=-1)
        assert (cos >= bank.threshold - 1e-6).all()


def test_bundled_files_load():
    watch = load_descriptions(default_file("watch"), WATCH)
    assert all(6 <= len(s) <= 8 for s in watch.subactions) and len(set(watch.labels)) == 7
    names = read_class_names(default_file("geneactiv_template"))
    assert len(names) >= 5
    t = load_descriptions(default_file("geneactiv_template"), names)
    assert t.outside_recommended_range() == []


def test_default_file_errors():
    with pytest.raises(TextError, match="set text.file"):
        build_text_bank(TextConfig(), ["a"], "npz")
    with pytest.raises(TextError, match="mystery.yaml.*does not exist"):
        build_text_bank(TextConfig(), ["a"], "mystery")


# ----------------------------------------------------------------------------- description errors
GOOD = "classes:\n  A: {label: 'a', subactions: ['x', 'y']}\n  B: {label: 'b', subactions: ['z']}\n"
ERRORS = [   # (YAML, class names, message pattern)
    ("classes:\n  A: {label: 'a', subactions: ['x']}\n", ["A", "B"], "class 'B' has no sub-action text in .*; add it"),
    ("classes:\n  A: {label: 'a', subactions: ['x', '']}\n", ["A"], "class 'A' sub-action 1 .* is empty"),
    ("classes:\n  A: {label: 'a', subactions: ['x', '   ']}\n", ["A"], "class 'A' sub-action 1 .* is empty"),
    ("classes:\n  A: {label: ' ', subactions: ['x']}\n", ["A"], "class 'A' label is empty"),
    ("classes:\n  A: {label: 'a', subactions: []}\n", ["A"], "class 'A' needs a non-empty `subactions:`"),
    ("classes:\n  A: {label: 'a', subactions: 'x'}\n", ["A"], "class 'A' needs a non-empty `subactions:`"),
    ("classes:\n  A: {label: 'a', subactions: ['x', 3]}\n", ["A"], "class 'A' sub-action 1 .* must be a string, got int"),
    ("classes:\n  A: {label: ['a'], subactions: ['x']}\n", ["A"], "class 'A' label must be a string"),
    ("classes:\n  A: {label: 'a', subaction: ['x']}\n", ["A"], "class 'A' needs exactly `label:` and `subactions:`"),
    ("classes:\n  A: {label: 'a', subactions: ['x']}\n  Z: {label: 'z', subactions: ['x']}\n", ["A"],
     r"describes classes \['Z'\] that the data set does not have"),
    ("classes:\n  A: {label: 'a', subactions: ['x']}\n  A: {label: 'b', subactions: ['y']}\n", ["A"],
     "line 3, column 3: duplicate key 'A'"),
    ("classes:\n  A: [unclosed\n", ["A"], "does not parse as YAML at line 3"),
    ("labels: {}\n", ["A"], "`classes:` mapping"),
    ("- just a list\n", ["A"], "`classes:` mapping"),
    ("classes: {A: {label: a, subactions: [x]}}\nextra: 1\n", ["A"], r"unknown top-level keys \['extra'\]"),
    ("classes: {A: {label: a, subactions: [x]}}\nprimitives: {p: ''}\n", ["A"], "primitive 'p' is empty"),
]


def write(tmp_path, text):
    p = tmp_path / "my_descriptions.yaml"
    p.write_text(text)
    return p


def test_good_description_file(tmp_path):
    d = load_descriptions(write(tmp_path, GOOD), ["B", "A"])      # class_names order, not file order
    assert d.labels == ["b", "a"] and d.subactions == [["z"], ["x", "y"]]
    assert d.outside_recommended_range() == ["B", "A"] and d.primitives == {}
    numeric = load_descriptions(write(tmp_path, "classes:\n  0: {label: a, subactions: [x]}\n"), [0])
    assert numeric.class_names == ["0"]                           # YAML `0:` is an int key; names compare as str


@pytest.mark.parametrize("text, names, msg", ERRORS)
def test_description_errors_name_entry_and_file(tmp_path, text, names, msg):
    path = write(tmp_path, text)
    with pytest.raises(TextError, match=msg) as err:
        load_descriptions(path, names)
    assert str(path) in str(err.value)


def test_missing_description_file(tmp_path):
    with pytest.raises(TextError, match="missing.yaml.*does not exist; set text.file"):
        load_descriptions(tmp_path / "missing.yaml", ["A"])
