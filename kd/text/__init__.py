"""Text side (METHOD.md §2): sub-action descriptions (YAML), a frozen sentence encoder with an
on-disk cache, and the de-duplicated sub-action vocabulary, gathered in a `TextBank`.

    from kd.text import build_text_bank
    bank = build_text_bank(cfg.text, class_names, cfg.data.name)   # bank.M: vocabulary size, log it
    bank.label_emb (n_cls, D) · bank.vocab_emb (M, D) · bank.class_index (n_cls, K_max), -1 = padding
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from kd.text.descriptions import (ClassDescriptions, default_file, load_descriptions, read_class_names)
from kd.text.encoder import BUNDLED, TextEncoder, TextModelError
from kd.text.errors import TextError
from kd.text.vocab import Vocabulary, build_vocabulary

__all__ = ["BUNDLED", "ClassDescriptions", "TextBank", "TextEncoder", "TextError", "TextModelError", "Vocabulary",
           "build_text_bank", "build_vocabulary", "default_file", "description_file", "load_descriptions",
           "read_class_names"]


@dataclass
class TextBank:
    """Everything the text-guided teacher needs, embedded once."""
    descriptions: ClassDescriptions
    label_emb: torch.Tensor                 # (n_cls, D)
    sub_emb_per_class: List[torch.Tensor]   # n_cls x (K_c, D)
    vocab: Vocabulary
    model: str                              # text.model it was built with
    threshold: float                        # text.dedup_threshold it was built with

    @property
    def class_names(self) -> List[str]:
        return self.descriptions.class_names

    @property
    def vocab_emb(self) -> torch.Tensor:        # (M, D)
        return self.vocab.emb

    @property
    def class_index(self) -> torch.Tensor:      # (n_cls, K_max), -1 = padding
        return self.vocab.class_index

    @property
    def class_mask(self) -> torch.Tensor:       # (n_cls, K_max)
        return self.vocab.class_mask

    @property
    def vocab_texts(self) -> List[str]:
        return self.vocab.texts

    @property
    def M(self) -> int:
        return self.vocab.M

    @property
    def dim(self) -> int:
        return self.label_emb.shape[1]

    def meta(self) -> Dict:
        """JSON-able: model, threshold, class names, every sentence, vocabulary texts."""
        d = self.descriptions
        return {"model": self.model, "threshold": self.threshold, "class_names": list(d.class_names),
                "labels": list(d.labels), "subactions": [list(s) for s in d.subactions],
                "primitives": dict(d.primitives), "file": d.path, "vocab_texts": list(self.vocab.texts)}


def description_file(text_cfg, dataset: str) -> Path:
    """text.file, else the packaged kd/text/descriptions/<dataset>.yaml (none for user npz data)."""
    if text_cfg.file:
        return Path(text_cfg.file)
    if dataset == "npz":
        raise TextError("data.name=npz has no packaged sub-action file: set text.file to your YAML "
                        "(start from kd/text/descriptions/geneactiv_template.yaml)")
    return default_file(dataset)


def build_text_bank(text_cfg, class_names: Sequence[str], dataset: str, dataset_classes: Sequence[str] = ()) -> TextBank:
    """`text_cfg`: the `text` node of the run config (OmegaConf) or a `TextConfig` dataclass; `dataset_classes`:
    the data set's classes this task leaves out, which its file may describe (load_descriptions)."""
    desc = load_descriptions(description_file(text_cfg, dataset), class_names, dataset_classes)
    enc = TextEncoder(text_cfg.model, text_cfg.cache_dir, text_cfg.max_length, text_cfg.batch_size)
    emb = enc.encode(desc.labels + [s for subs in desc.subactions for s in subs])   # one call: one load at most
    n = len(desc.labels)
    per_class = list(emb[n:].split([len(s) for s in desc.subactions]))            # n_cls x (K_c, D)
    vocab = build_vocabulary(per_class, text_cfg.dedup_threshold, desc.subactions)
    return TextBank(desc, emb[:n], per_class, vocab, text_cfg.model, float(text_cfg.dedup_threshold))
