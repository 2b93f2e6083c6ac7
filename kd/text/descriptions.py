"""Sub-action descriptions: one YAML file per data set, the interface between text and model.

Format::

    dataset: watch                 # informative
    classes:
      PEN:                         # exactly the data set's class names
        label: "One sentence describing the whole activity."
        subactions:                # in temporal order; 5-10 recommended (1+ accepted)
          - "Arm: ... ; what a wrist IMU sees."
          - ...
    primitives:                    # optional: name -> sentence (synthetic data: the ground truth)
      rest: "..."

Sentences may be written by hand or produced offline by an LLM; the loader only checks them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

DESCRIPTIONS_DIR = Path(__file__).parent / "descriptions"
TOP_LEVEL = {"dataset", "classes", "primitives"}


class TextError(ValueError):
    """A sub-action file that cannot be used; the message names the file and the entry."""


@dataclass
class ClassDescriptions:
    class_names: List[str]
    labels: List[str]
    subactions: List[List[str]]
    primitives: Dict[str, str] = field(default_factory=dict)
    path: str = ""


def default_file(dataset: str) -> Path:
    return DESCRIPTIONS_DIR / f"{dataset}.yaml"


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise TextError(f"sub-action file {str(path)!r} does not exist; set text.file to your YAML "
                        f"(see kd/text/descriptions/geneactiv_template.yaml)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise TextError(f"sub-action file {path} does not parse as YAML{at}: "
                        f"{getattr(err, 'problem', err)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict):
        raise TextError(f"{path} must be a mapping with a `classes:` mapping (class name -> label, subactions)")
    unknown = set(doc) - TOP_LEVEL
    if unknown:
        raise TextError(f"{path} has unknown top-level keys {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    return doc


def sentence(value, what: str, path: Path) -> str:
    if not isinstance(value, str):
        raise TextError(f"{path}: {what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TextError(f"{path}: {what} is empty; write a sentence")
    return value.strip()


def load_descriptions(path, class_names: Sequence[str]) -> ClassDescriptions:
    """Labels and sub-actions in `class_names` order, with clear errors for anything missing."""
    path = Path(path)
    doc = read_yaml(path)
    classes = doc["classes"]
    extra = sorted(set(map(str, classes)) - set(class_names))
    if extra:
        raise TextError(f"{path} describes classes {extra} that the data set does not have "
                        f"(its classes: {list(class_names)}); fix the names")
    labels, subs = [], []
    for name in class_names:
        entry = classes.get(name)
        if entry is None:
            raise TextError(f"class {name!r} has no sub-action text in {path}; add it")
        if not isinstance(entry, dict) or "label" not in entry or "subactions" not in entry:
            raise TextError(f"{path}: class {name!r} needs `label:` and `subactions:`")
        labels.append(sentence(entry["label"], f"class {name!r} label", path))
        items = entry["subactions"]
        if not isinstance(items, list) or not items:
            raise TextError(f"{path}: class {name!r} needs a non-empty `subactions:` list")
        subs.append([sentence(s, f"class {name!r} sub-action {i}", path) for i, s in enumerate(items)])
    primitives = {str(k): sentence(v, f"primitive {k!r}", path) for k, v in (doc.get("primitives") or {}).items()}
    return ClassDescriptions(list(class_names), labels, subs, primitives, str(path))
