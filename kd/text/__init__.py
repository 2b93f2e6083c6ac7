"""Text side (../shared/DESIGN.md §2): sub-action descriptions, a frozen sentence encoder with an
on-disk cache, and the de-duplicated sub-action vocabulary, gathered in a `TextBank`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch

from kd.text.descriptions import ClassDescriptions, TextError, default_file, load_descriptions
from kd.text.encoder import BUNDLED, TextEncoder, TextModelError
from kd.text.vocab import Vocabulary, build_vocabulary

__all__ = ["TextBank", "TextEncoder", "TextError", "TextModelError", "Vocabulary", "build_text_bank",
           "build_vocabulary", "load_descriptions", "ClassDescriptions"]


@dataclass
class TextBank:
    """Everything the text-guided teacher needs, embedded once."""
    class_names: List[str]
    descriptions: ClassDescriptions
    label_emb: torch.Tensor            # (n_cls, D)
    sub_emb_per_class: List[torch.Tensor]
    vocab: Vocabulary
    model: str

    @property
    def vocab_emb(self) -> torch.Tensor:
        return self.vocab.emb

    @property
    def class_index(self) -> torch.Tensor:
        return self.vocab.class_index

    @property
    def class_mask(self) -> torch.Tensor:
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


def description_file(text_cfg, dataset: str):
    if text_cfg.file:
        return text_cfg.file
    if dataset == "npz":
        raise TextError("data.name=npz has no bundled sub-action file: set text.file to your YAML "
                        "(start from kd/text/descriptions/geneactiv_template.yaml)")
    return default_file(dataset)


def build_text_bank(text_cfg, class_names: Sequence[str], dataset: str) -> TextBank:
    desc = load_descriptions(description_file(text_cfg, dataset), class_names)
    enc = TextEncoder(text_cfg.model, text_cfg.cache_dir, text_cfg.max_length, text_cfg.batch_size)
    flat = [s for subs in desc.subactions for s in subs]
    emb = enc.encode(desc.labels + flat)                                      # one call: one model load at most
    n = len(desc.labels)
    label_emb, sub_flat = emb[:n], emb[n:]
    per_class = list(torch.split(sub_flat, [len(s) for s in desc.subactions]))
    vocab = build_vocabulary(per_class, desc.subactions, text_cfg.dedup_threshold)
    return TextBank(list(class_names), desc, label_emb, per_class, vocab, text_cfg.model)
