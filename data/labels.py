"""The one source of truth for class names, their order and the one-hot folder codes.

The order is alphabetical and is used everywhere: model outputs, CSV columns and the
digits of the folder codes (``complex`` -> ``100000``, ``scab`` -> ``000001``).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

CLASSES: tuple[str, ...] = (
    "complex",
    "frog_eye_leaf_spot",
    "healthy",
    "powdery_mildew",
    "rust",
    "scab",
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}


def parse_labels(labels: str | Iterable[str]) -> list[str]:
    """Split a Kaggle label string (space-separated) and check every name.

    Returns the names in ``CLASSES`` order without duplicates; raises ``ValueError``
    naming the first unknown label.
    """
    names = labels.split() if isinstance(labels, str) else list(labels)
    unknown = [n for n in names if n not in CLASS_INDEX]
    if unknown:
        raise ValueError(f"unknown label {unknown[0]!r} (known: {', '.join(CLASSES)})")
    if not names:
        raise ValueError("empty label")
    return sorted(set(names), key=CLASS_INDEX.__getitem__)


def labels_to_vector(labels: str | Iterable[str]) -> np.ndarray:
    """Multi-hot float32 vector of length ``NUM_CLASSES``."""
    vec = np.zeros(NUM_CLASSES, dtype=np.float32)
    for name in parse_labels(labels):
        vec[CLASS_INDEX[name]] = 1.0
    return vec


def vector_to_labels(vector: Sequence[float] | np.ndarray) -> list[str]:
    """Names of the classes whose entry is positive, in ``CLASSES`` order."""
    return [name for name, v in zip(CLASSES, vector) if v > 0]


def vector_to_code(vector: Sequence[float] | np.ndarray) -> str:
    """``[1,0,0,0,0,0]`` -> ``'100000'``."""
    if len(vector) != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} entries, got {len(vector)}")
    return "".join("1" if v > 0 else "0" for v in vector)


def is_code(code: str) -> bool:
    """True for a string of NUM_CLASSES binary digits with at least one ``1``."""
    return len(code) == NUM_CLASSES and set(code) <= {"0", "1"} and "1" in code


def code_to_vector(code: str) -> np.ndarray:
    """``'100000'`` -> multi-hot float32 vector; raises ``ValueError`` on a bad code."""
    if not is_code(code):
        raise ValueError(f"{code!r} is not a class code of {NUM_CLASSES} binary digits")
    return np.array([float(c) for c in code], dtype=np.float32)


def label_to_code(name: str) -> str:
    """The one-hot folder code of a single class: ``'scab'`` -> ``'000001'``."""
    return vector_to_code(labels_to_vector([name]))


def labels_to_codes(labels: str | Iterable[str]) -> list[str]:
    """One-hot codes of every label of an image: the folders it is linked into."""
    return [label_to_code(name) for name in parse_labels(labels)]


def labels_to_string(labels: Iterable[str]) -> str:
    """Kaggle's label string: names in ``CLASSES`` order, space-separated."""
    return " ".join(parse_labels(labels))
