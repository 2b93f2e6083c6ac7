"""Sub-action descriptions: one YAML file per data set, the interface between text and model.

Format::

    dataset: watch                     # optional, informative only
    classes:                           # one entry per class of the data set, keys = its class names
      PEN:
        label: "One sentence describing the whole activity."
        subactions:                    # in temporal order within one repetition of the activity
          - "Arm: ...; wrist IMU: what the sensor sees."
          - ...
    primitives:                        # optional: name -> sentence (the synthetic set's ground truth)
      rest: "..."

Rules the loader enforces (a `TextError` naming the file and entry otherwise): every class of the
data set has an entry and no entry names a class the data set lacks (likely a typo); each entry has
exactly `label` and `subactions`; the label and every sub-action are non-blank strings; at least one
sub-action. Duplicate keys anywhere are errors. 5-10 sub-actions per class is the recommended range
(METHOD.md §2); fewer or more is accepted (`outside_recommended_range` lists such classes).
Write a phase that several classes share with the *identical* sentence so the vocabulary merges it.
Sentences may be written by hand or produced offline by an LLM; the loader only checks them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

from kd.text.errors import TextError

DESCRIPTIONS_DIR = Path(__file__).parent / "descriptions"
TOP_LEVEL = ("dataset", "classes", "primitives")
ENTRY_KEYS = {"label", "subactions"}
RECOMMENDED_K = (5, 10)


@dataclass
class ClassDescriptions:
    class_names: List[str]
    labels: List[str]                  # one per class, in class_names order
    subactions: List[List[str]]        # K_c per class, in class_names order
    primitives: Dict[str, str] = field(default_factory=dict)
    path: str = ""

    def outside_recommended_range(self) -> List[str]:
        lo, hi = RECOMMENDED_K
        return [n for n, s in zip(self.class_names, self.subactions) if not lo <= len(s) <= hi]


def default_file(dataset: str) -> Path:
    return DESCRIPTIONS_DIR / f"{dataset}.yaml"


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(path: Path):
    if not path.is_file():
        raise TextError(f"sub-action file {str(path)!r} does not exist; set text.file to your YAML "
                        f"(start from kd/text/descriptions/geneactiv_template.yaml)")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:   # re-raised with the file and position
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TextError(f"sub-action file {path} does not parse as YAML{at}: "
                        f"{getattr(err, 'problem', None) or err}") from None


def read_classes(path: Path) -> tuple[dict, Dict[str, dict]]:
    """(document, {class name: entry}); class keys become strings (YAML may read `1:` as an int)."""
    doc = parse_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict):
        raise TextError(f"{path} must be a mapping with a `classes:` mapping (class name -> label, subactions)")
    unknown = sorted(map(str, set(doc) - set(TOP_LEVEL)))
    if unknown:
        raise TextError(f"{path} has unknown top-level keys {unknown}; allowed: {list(TOP_LEVEL)}")
    return doc, {str(k): v for k, v in doc["classes"].items()}


def read_class_names(path) -> List[str]:
    """The class names a description file describes, in file order (e.g. to probe a template)."""
    return list(read_classes(Path(path))[1])


def sentence(value, what: str, path: Path) -> str:
    if not isinstance(value, str):
        raise TextError(f"{path}: {what} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise TextError(f"{path}: {what} is empty; write a sentence")
    return value.strip()


def class_entry(entry, name: str, path: Path) -> tuple[str, List[str]]:
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        got = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise TextError(f"{path}: class {name!r} needs exactly `label:` and `subactions:`, got {got}")
    items = entry["subactions"]
    if not isinstance(items, list) or not items:
        raise TextError(f"{path}: class {name!r} needs a non-empty `subactions:` list (5-10 sentences recommended)")
    label = sentence(entry["label"], f"class {name!r} label", path)
    return label, [sentence(s, f"class {name!r} sub-action {i} (0-based)", path) for i, s in enumerate(items)]


def read_primitives(doc: dict, path: Path) -> Dict[str, str]:
    prim = doc.get("primitives") or {}
    if not isinstance(prim, dict):
        raise TextError(f"{path}: `primitives:` must be a mapping name -> sentence")
    return {str(k): sentence(v, f"primitive {k!r}", path) for k, v in prim.items()}


def load_descriptions(path, class_names: Sequence[str], dataset_classes: Sequence[str] = ()) -> ClassDescriptions:
    """Labels and sub-actions in `class_names` order; a `TextError` naming file and entry otherwise.
    `dataset_classes`: the data set's classes outside this task's (e.g. HAPT's activities when the task is its
    transitions), which the file may describe too."""
    path = Path(path)
    doc, classes = read_classes(path)
    class_names = [str(c) for c in class_names]
    extra = [c for c in classes if c not in class_names and c not in dataset_classes]
    if extra:
        raise TextError(f"{path} describes classes {extra} that the data set does not have "
                        f"(its classes: {class_names}); fix the names (a typo?) or remove them")
    labels, subs = [], []
    for name in class_names:
        if name not in classes:
            raise TextError(f"class {name!r} has no sub-action text in {path}; add it")
        label, items = class_entry(classes[name], name, path)
        labels.append(label)
        subs.append(items)
    return ClassDescriptions(class_names, labels, subs, read_primitives(doc, path), str(path))
