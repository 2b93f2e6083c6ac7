"""Classification metrics on gathered predictions (numpy, no sklearn dependency)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(n_cls, n_cls) counts; rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the true labels or the predictions."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def per_class_f1(cm: np.ndarray, class_names: List[str]) -> Dict[str, Optional[float]]:
    """F1 of each class; None for a class neither in the true labels nor in the predictions."""
    tp = np.diag(cm).astype(float)
    both = (cm.sum(1) + cm.sum(0)).astype(float)
    return {name: (float(2 * tp[k] / both[k]) if both[k] > 0 else None) for k, name in enumerate(class_names)}


def classification_report(y_true, y_pred, class_names: List[str]) -> Dict:
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    n = int(cm.sum())
    return {"accuracy": float(np.trace(cm) / n) if n else 0.0, "macro_f1": macro_f1(cm),
            "per_class_f1": per_class_f1(cm, class_names),
            "n": n, "confusion": cm.tolist(), "class_names": list(class_names)}
