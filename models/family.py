"""Which family a timm backbone belongs to: one rule for the builder, the explainers and the runtime choice.

A model's family is the timm module that defines it, whether asked by name (``MODEL.TYPE``, before
anything is built, or an exported file's metadata) or of a built backbone; so ``test_vit`` and
``vit_base_patch16_224`` are both ViTs, and upstream Swin yaml files' ``TYPE: swin`` is a Swin.
"""
from __future__ import annotations

import timm
from torch import nn

SWIN, VIT, OTHER = "swin", "vit", "other"
# timm modules -> family: Swin (takes the MODEL.SWIN.* overrides) and ViT-family token transformers
_FAMILY_OF_MODULE = {
    "timm.models.swin_transformer": SWIN,
    "timm.models.swin_transformer_v2": SWIN,
    "timm.models.vision_transformer": VIT,
    "timm.models.deit": VIT,
    "timm.models.eva": VIT,
}
TRANSFORMERS = (SWIN, VIT)
# upstream Swin yaml files say `TYPE: swin` and describe the architecture in MODEL.SWIN.*;
# that base model plus the overrides builds exactly what they describe
_UPSTREAM_NAMES = {"swin": "swin_tiny_patch4_window7_224"}


def timm_name(model_type: str) -> str:
    """The timm model name of a ``MODEL.TYPE`` (the upstream fork's ``swin`` included)."""
    return _UPSTREAM_NAMES.get(model_type, model_type)


def family(model_type: str) -> str:
    """SWIN, VIT or OTHER for the timm model named ``model_type`` (OTHER too for a name timm lacks)."""
    name = timm_name(model_type)
    if not timm.is_model(name):
        return OTHER
    return _FAMILY_OF_MODULE.get(timm.models.model_entrypoint(name).__module__, OTHER)


def family_of(backbone: nn.Module) -> str:
    """SWIN, VIT or OTHER for a built timm backbone (the module its class comes from)."""
    return _FAMILY_OF_MODULE.get(type(backbone).__module__, OTHER)
