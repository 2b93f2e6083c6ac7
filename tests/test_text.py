"""Text side: encoder convention and cache, descriptions validation, vocabulary de-duplication."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kd.config import TextConfig  # noqa: E402
from kd.data.synthetic import CLASS_NAMES, CLASSES, PRIMITIVES  # noqa: E402
from kd.text import (TextEncoder, TextError, TextModelError, build_text_bank, build_vocabulary,  # noqa: E402
                     load_descriptions)
from kd.text.descriptions import default_file  # noqa: E402

WATCH = ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
SENTENCES = ["The wrist swings forward.", "The arm rests at the side.", "The wrist swings forward."]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("text_cache")


@pytest.fixture(scope="module")
def encoded(cache_dir):
    enc = TextEncoder(cache_dir=str(cache_dir))
    return enc, enc.encode(SENTENCES)


def test_encoder_shape_unit_norm_and_identical_texts(encoded):
    enc, emb = encoded
    assert emb.shape == (3, 384) and enc.dim == 384
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[2])
    assert F.cosine_similarity(emb[0], emb[1], dim=0) < 0.99


def test_encoder_matches_sentence_transformers_convention(encoded):
    """Masked mean pooling + L2 norm, computed independently with the raw transformers model."""
    from transformers import AutoModel, AutoTokenizer
    enc, emb = encoded
    tok = AutoTokenizer.from_pretrained(str(enc.model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(enc.model_dir), local_files_only=True).eval()
    with torch.no_grad():
        for i, s in enumerate(SENTENCES[:2]):                      # one at a time: no padding involved
            h = model(**tok([s], return_tensors="pt")).last_hidden_state[0]
            assert torch.allclose(emb[i], F.normalize(h.mean(0), dim=0), atol=1e-5)


def test_cache_hit_does_not_load_model(encoded, cache_dir, monkeypatch):
    _, emb = encoded
    import transformers
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded on a cache hit")))
    again = TextEncoder(cache_dir=str(cache_dir))
    assert torch.equal(again.encode(SENTENCES), emb)
    assert not again.loaded


def test_cached_equals_fresh(encoded, tmp_path):
    _, emb = encoded
    fresh = TextEncoder(cache_dir=None).encode(SENTENCES)
    assert torch.allclose(fresh, emb, atol=1e-5)


def test_missing_model_dir_and_bad_input():
    with pytest.raises(TextModelError, match="local Hugging Face model directory"):
        TextEncoder(model="/nonexistent/bert-base")
    with pytest.raises(TextModelError, match="non-blank strings"):
        TextEncoder(cache_dir=None).encode(["ok", "  "])


# ----------------------------------------------------------------------------- vocabulary
def test_vocabulary_dedup_on_hand_made_vectors():
    e = torch.eye(4)
    near = F.normalize(e[0] + 0.1 * e[1], dim=0)                  # cos with e0 = 0.995
    far = F.normalize(e[0] + 0.6 * e[1], dim=0)                   # cos with e0 = 0.857
    per_class = [torch.stack([e[0], e[1]]), torch.stack([e[0].clone(), near, far]), torch.stack([e[2]])]
    texts = [["a", "b"], ["a'", "a~", "af"], ["c"]]
    v = build_vocabulary(per_class, texts, threshold=0.95)
    assert v.M == 4 and v.texts == ["a", "b", "af", "c"]
    assert v.class_index.tolist() == [[0, 1, -1], [0, 0, 2], [3, -1, -1]]
    assert v.class_mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert build_vocabulary(per_class, texts, threshold=0.8).M == 3  # `far` merges too


def test_synthetic_vocabulary_is_one_entry_per_primitive(cache_dir):
    bank = build_text_bank(TextConfig(cache_dir=str(cache_dir)), CLASS_NAMES, "synthetic")
    assert bank.M == len(PRIMITIVES) == 10
    prim = bank.descriptions.primitives
    for c, name in enumerate(CLASS_NAMES):                        # every entry maps back to its primitive
        for k, p in enumerate(CLASSES[name]):
            assert bank.vocab_texts[bank.class_index[c, k]] == prim[p]


def test_watch_bank(cache_dir):
    bank = build_text_bank(TextConfig(cache_dir=str(cache_dir)), WATCH, "watch")
    assert bank.label_emb.shape == (7, 384) and bank.dim == 384
    assert 12 <= bank.M <= 64
    assert bank.class_mask.any(dim=1).all()
    assert bank.vocab_emb.shape == (bank.M, 384)


# ----------------------------------------------------------------------------- descriptions
def write(tmp_path, text):
    p = tmp_path / "d.yaml"
    p.write_text(text)
    return p


def test_description_errors(tmp_path):
    good = "classes:\n  A: {label: 'a', subactions: ['x', 'y']}\n  B: {label: 'b', subactions: ['z']}\n"
    d = load_descriptions(write(tmp_path, good), ["A", "B"])
    assert d.labels == ["a", "b"] and d.subactions == [["x", "y"], ["z"]]
    cases = [
        ("classes:\n  A: {label: 'a', subactions: ['x']}\n", ["A", "B"], "class 'B' has no sub-action text"),
        ("classes:\n  A: {label: 'a', subactions: ['x', '']}\n", ["A"], "class 'A' sub-action 1 is empty"),
        ("classes:\n  A: {label: ' ', subactions: ['x']}\n", ["A"], "class 'A' label is empty"),
        ("classes:\n  A: {label: 'a', subactions: []}\n", ["A"], "non-empty `subactions:`"),
        ("classes:\n  A: {label: 'a', subactions: [3]}\n", ["A"], "must be a string"),
        ("classes:\n  A: {label: 'a', subactions: ['x']}\n  Z: {label: 'z', subactions: ['x']}\n", ["A"],
         r"classes \['Z'\] that the data set does not have"),
        ("classes:\n  A: [unclosed\n", ["A"], "does not parse as YAML at line"),
        ("labels: {}\n", ["A"], "`classes:` mapping"),
        ("classes: {A: {label: a, subactions: [x]}}\nextra: 1\n", ["A"], "unknown top-level keys"),
    ]
    for text, names, msg in cases:
        with pytest.raises(TextError, match=msg):
            load_descriptions(write(tmp_path, text), names)
    with pytest.raises(TextError, match="does not exist"):
        load_descriptions(tmp_path / "missing.yaml", ["A"])


def test_bundled_files_load():
    assert len(load_descriptions(default_file("watch"), WATCH).subactions) == 7
    t = load_descriptions(default_file("geneactiv_template"), ["sitting", "walking_normal", "stairs_up"])
    assert all(5 <= len(s) <= 10 for s in t.subactions)
    with pytest.raises(TextError, match="set text.file"):
        build_text_bank(TextConfig(), ["a"], "npz")
