"""Configuration: yacs defaults, merged with a yaml file (``BASE:`` includes), then ``--opts``.

Key names follow Microsoft's Swin-Transformer repo so that its yaml files and commands keep
working; the keys marked "ours" are the multi-label additions.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from data.labels import CLASSES, NUM_CLASSES

logger = logging.getLogger(__name__)

LOSSES = ("bce", "focal", "asl")
HEADS = ("linear", "arcface")
PSA_NECKS = ("light", "report")
# AUG.PRESET: the training pipeline's structure (data/transforms.py)
AUG_PRESETS = ("timm", "report")

_C = CN()

# Base config files merged before this one (paths relative to the yaml that names them)
_C.BASE = [""]

# -----------------------------------------------------------------------------
# Data settings
# -----------------------------------------------------------------------------
_C.DATA = CN()
# Batch size for a single GPU (or the CPU), could be overwritten by command line argument
_C.DATA.BATCH_SIZE = 32
# Path to the prepared one-hot tree (DST of process/prepare.py: {train,val,test}/<code>/)
_C.DATA.DATA_PATH = "dataset"
# Input image size (square)
_C.DATA.IMG_SIZE = 224
# Interpolation used to resize images (bicubic, bilinear, nearest, ...); '' = the backbone's (timm
# pretrained_cfg). main.py resolves it before training, so config.yaml and checkpoints hold the value used.
_C.DATA.INTERPOLATION = ""
# Ours: per-channel normalisation mean (RGB, 0-1 scale); [] = the backbone's (timm pretrained_cfg:
# ImageNet's for Swin, 0.5 for tf_efficientnet_lite*), resolved like INTERPOLATION
_C.DATA.MEAN = []
# Ours: per-channel normalisation std; [] = the backbone's, resolved like INTERPOLATION
_C.DATA.STD = []
# Pin CPU memory in the DataLoader for faster transfer to the GPU
_C.DATA.PIN_MEMORY = True
# Number of data loading processes per training process
_C.DATA.NUM_WORKERS = 8
# Ours: per-class integer oversampling factors of the TRAINING split, e.g. {complex: 5}
# (or --opts DATA.OVERSAMPLE.complex 5). An image is repeated as often as the largest factor
# among its labels; validation and test are never touched.
_C.DATA.OVERSAMPLE = CN({name: 1 for name in CLASSES})
# Ours: class-balanced sampling of the training split: each epoch draws as many samples with replacement,
# an image weighted by the largest 1 / count ** SAMPLER_POWER among its labels; 0 = a plain shuffle.
# SAMPLER_UNTIL_EPOCH N: plain shuffles from epoch N on (-1: balanced throughout)
_C.DATA.SAMPLER_POWER = 0.0
_C.DATA.SAMPLER_UNTIL_EPOCH = -1
# Ours: K-fold training (main.py --fold k): train on every fold of DATA_PATH/folds.csv but k, validate on
# fold k (process/prepare.py --folds K writes the file); the run dir's tag gets "-fold<k>". -1: train/ and val/
_C.DATA.FOLD = -1
# Ours: a file listing images to leave out of training (scripts/label_issues.py writes exclude.csv; or one
# name per line); validation and test keep them. '' = none
_C.DATA.EXCLUDE = ""

# -----------------------------------------------------------------------------
# Model settings
# -----------------------------------------------------------------------------
_C.MODEL = CN()
# Backbone: any timm model name (timm.create_model(MODEL.TYPE, num_classes=0)); upstream's
# 'swin' means swin_tiny_patch4_window7_224 reshaped by the MODEL.SWIN.* overrides
_C.MODEL.TYPE = "swin_tiny_patch4_window7_224"
# Run name: the run directory is OUTPUT/MODEL.NAME/TAG
_C.MODEL.NAME = "swin_tiny_patch4_window7_224"
# Pretrained weights: a file (official Microsoft .pth, timm .pth/.bin/.safetensors) or packaged weights by
# name (efficientnet_lite0/1/2: the ImageNet file inside an installed pip package); '' = none
_C.MODEL.PRETRAINED = ""
# Checkpoint to resume from; '' = OUTPUT/NAME/TAG/ckpt_latest.pth when it exists
_C.MODEL.RESUME = ""
# Number of output labels: six Plant Pathology 2021 classes, never 1000
_C.MODEL.NUM_CLASSES = NUM_CLASSES
# Dropout rate on the features given to the head (applied once, by our model, not by timm)
_C.MODEL.DROP_RATE = 0.0
# Stochastic depth rate
_C.MODEL.DROP_PATH_RATE = 0.1
# Label smoothing of the multi-hot targets, bce and focal: 1 -> 1 - eps/2, 0 -> eps/2 (0 disables)
_C.MODEL.LABEL_SMOOTHING = 0.0
# Ours: classification head: 'linear' (6 sigmoid logits) or 'arcface' (multi-label ArcFace)
_C.MODEL.HEAD = "linear"
# Ours: keep the backbone's BatchNorm layers in eval mode while training: their running statistics
# stay those of the pretrained weights (small CPU batches give noisy ones); their scale and shift
# still learn. No effect on backbones without BatchNorm (Swin).
_C.MODEL.FREEZE_BN = False

# Swin backbone overrides (Swin models only); 0 or [] keeps the value of the timm model named by
# MODEL.TYPE. Swin and ViT-family models also get img_size = DATA.IMG_SIZE.
_C.MODEL.SWIN = CN()
# Patch size of the patch embedding (pixels)
_C.MODEL.SWIN.PATCH_SIZE = 0
# Channels of the first stage (doubled at each later stage)
_C.MODEL.SWIN.EMBED_DIM = 0
# Number of blocks per stage, e.g. [2, 2, 6, 2]
_C.MODEL.SWIN.DEPTHS = []
# Attention heads per stage, e.g. [3, 6, 12, 24]
_C.MODEL.SWIN.NUM_HEADS = []
# Attention window size (tokens); pretrained bias tables are resized to it
_C.MODEL.SWIN.WINDOW_SIZE = 0
# Hidden width of the MLPs relative to the stage width
_C.MODEL.SWIN.MLP_RATIO = 0.0

# Warp the image with a spatial transformer before the backbone (the ArcPSA report's STN, models/stn.py;
# the identity at initialisation)
_C.MODEL.STN = False

# Ours: polarized self-attention (sequential) on the backbone's last feature map
_C.MODEL.PSA = CN()
# Insert PSA -> average pooling -> Linear + LayerNorm to MODEL.PSA.OUT_DIM before the head
_C.MODEL.PSA.ENABLE = False
# "light": PSA -> pool -> Linear + LayerNorm; "report": the ArcPSA report's PSANFeatureModule (1x1 conv blocks
# around PSA, then Linear -> HIDDEN_DIM -> OUT_DIM with BatchNorm1d + PReLU; models/psa.py ReportPSANeck)
_C.MODEL.PSA.NECK = "light"
# the report neck's first linear width (the report's 768)
_C.MODEL.PSA.HIDDEN_DIM = 768
# Width of the embedding the neck hands the head (the report's 512); without PSA the head takes the
# backbone's pooled features (backbone.num_features wide)
_C.MODEL.PSA.OUT_DIM = 512

# Ours: multi-label ArcFace head
_C.MODEL.ARCFACE = CN()
# Logit scale s: logits are s * cos(theta)
_C.MODEL.ARCFACE.SCALE = 30.0
# Additive angular margin m (radians) applied at positive labels during training only
_C.MODEL.ARCFACE.MARGIN = 0.5
# Use the easy margin (apply the margin only where cos(theta) > 0)
_C.MODEL.ARCFACE.EASY_MARGIN = False

# Ours: exponential moving average of the weights
_C.MODEL.EMA = CN()
# Keep an EMA copy of the weights (saved as 'ema' in checkpoints)
_C.MODEL.EMA.ENABLE = False
# EMA decay per optimizer update
_C.MODEL.EMA.DECAY = 0.999
# Validate (and keep the best) with the EMA weights instead of the raw ones
_C.MODEL.EMA.EVAL = True

# -----------------------------------------------------------------------------
# Loss (ours)
# -----------------------------------------------------------------------------
_C.LOSS = CN()
# 'bce' (BCE with logits), 'focal' (multi-label sigmoid focal loss) or 'asl' (timm's asymmetric loss,
# AsymmetricLossMultiLabel: summed over classes, averaged over the batch, computed in float32)
_C.LOSS.NAME = "bce"
# ASL: focusing of negatives and positives, and the probability margin shifted onto negatives
_C.LOSS.ASL_GAMMA_NEG = 4.0
_C.LOSS.ASL_GAMMA_POS = 1.0
_C.LOSS.ASL_CLIP = 0.05
# Weight of the positive term per class (bce, asl): [] = none, or six numbers in CLASSES order
_C.LOSS.POS_WEIGHT = []
# Set POS_WEIGHT from the training split: (negatives / positives) ** POS_WEIGHT_POWER per class
_C.LOSS.POS_WEIGHT_AUTO = False
_C.LOSS.POS_WEIGHT_POWER = 0.5
# Focal loss alpha (weight of positives; < 0 disables the weighting)
_C.LOSS.FOCAL_ALPHA = 0.25
# Focal loss gamma (focusing parameter)
_C.LOSS.FOCAL_GAMMA = 2.0

# -----------------------------------------------------------------------------
# Training settings
# -----------------------------------------------------------------------------
_C.TRAIN = CN()
# Total number of epochs, warmup included
_C.TRAIN.EPOCHS = 30
# Epochs of linear warmup from WARMUP_LR to BASE_LR
_C.TRAIN.WARMUP_EPOCHS = 2
# AdamW weight decay (never applied to norms, biases, position tables, ArcFace centres)
_C.TRAIN.WEIGHT_DECAY = 0.05
# Peak learning rate, used as given (not scaled by batch size)
_C.TRAIN.BASE_LR = 5e-4
# Learning rate at the start of warmup
_C.TRAIN.WARMUP_LR = 5e-7
# Learning rate at the end of the decay
_C.TRAIN.MIN_LR = 5e-6
# Clip gradient norm (0 disables clipping)
_C.TRAIN.CLIP_GRAD = 5.0
# Resume from OUTPUT/NAME/TAG/ckpt_latest.pth automatically
_C.TRAIN.AUTO_RESUME = True
# Gradient accumulation steps
_C.TRAIN.ACCUMULATION_STEPS = 1
# Gradient checkpointing to save memory
_C.TRAIN.USE_CHECKPOINT = False
# Ours: stop after this many epochs without a better validation metric (0 disables)
_C.TRAIN.PATIENCE = 0
# Ours: validation metric that selects ckpt_best.pth (a key of the metrics summary)
_C.TRAIN.BEST_METRIC = "macro_f1"
# Ours: learning rate of the backbone relative to the new neck and head (e.g. 0.1 for a pretrained
# backbone); the schedule scales every parameter group alike, so the ratio holds throughout
_C.TRAIN.BACKBONE_LR_SCALE = 1.0
# Layer-wise learning rate decay of the backbone (upstream Swin's fine-tuning key; 1.0 disables): its
# last layer keeps the full rate, each earlier one is LAYER_DECAY times the next (timm's groups)
_C.TRAIN.LAYER_DECAY = 1.0
# Ours: staged unfreezing: the backbone is frozen (no gradients, BatchNorm statistics fixed) for the
# first N epochs, while the new neck and head learn; 0 trains everything from the start
_C.TRAIN.FREEZE_BACKBONE_EPOCHS = 0

# LR scheduler (training/schedule.py)
_C.TRAIN.LR_SCHEDULER = CN()
# timm scheduler name stepped per update ('cosine', 'step', ...), or 'plateau': the lr times DECAY_RATE
# whenever TRAIN.BEST_METRIC on validation has not improved for PATIENCE_EPOCHS + 1 epochs in a row
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"
# Epoch interval to decay LR, used in StepLRScheduler
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30
# LR decay rate: per DECAY_EPOCHS for 'step', per plateau for 'plateau'
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1
# Ours: 'plateau': epochs without improvement tolerated before the lr drops (PyTorch's ReduceLROnPlateau)
_C.TRAIN.LR_SCHEDULER.PATIENCE_EPOCHS = 2
# Ours: 'multistep': the epochs (counted from the start of training, after WARMUP_EPOCHS) at whose start the
# lr is multiplied by DECAY_RATE, as PyTorch's MultiStepLR (required: timm's defaults are epochs 90, 180, 270)
_C.TRAIN.LR_SCHEDULER.MILESTONES = []

# Optimizer
_C.TRAIN.OPTIMIZER = CN()
# timm optimizer name: 'adamw', 'sgd', ...
_C.TRAIN.OPTIMIZER.NAME = "adamw"
# Optimizer epsilon (Adam family)
_C.TRAIN.OPTIMIZER.EPS = 1e-8
# Optimizer betas (Adam family)
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
# SGD momentum
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9

# -----------------------------------------------------------------------------
# Augmentation settings
# -----------------------------------------------------------------------------
_C.AUG = CN()
# Ours: 'timm': random resized crop, flips, AUG.ROTATION/AFFINE_*, RandAugment or colour jitter, random
# erasing (timm's pipeline); 'report': the ArcPSA report's list, in its order: resize, flips, rotation,
# colour jitter, affine (no crop, no RandAugment), random erasing only if REPROB > 0
_C.AUG.PRESET = "timm"
# Ours: random horizontal flip probability
_C.AUG.HFLIP = 0.5
# Ours: random rotation by up to this many degrees either way (0 disables; the report: 30)
_C.AUG.ROTATION = 0.0
# Ours: random affine: rotation degrees, translation (fraction of the side), scale range (the report: 10,
# 0.1, [0.9, 1.1]); all three at 0, 0, [1, 1] disable it
_C.AUG.AFFINE_DEGREES = 0.0
_C.AUG.AFFINE_TRANSLATE = 0.0
_C.AUG.AFFINE_SCALE = [1.0, 1.0]
# Color jitter factor of brightness, contrast and saturation (0 disables); with the 'timm' preset only
# when AUTO_AUGMENT is off (timm's rule)
_C.AUG.COLOR_JITTER = 0.4
# Ours: colour jitter of the hue, up to this fraction of the colour wheel either way (0 disables; the report: 0.2)
_C.AUG.HUE = 0.0
# Use AutoAugment policy ('' or 'none' disables), e.g. 'rand-m9-mstd0.5-inc1'
_C.AUG.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
# Random erase prob
_C.AUG.REPROB = 0.25
# Random erase mode
_C.AUG.REMODE = "pixel"
# Random erase count
_C.AUG.RECOUNT = 1
# Ours: random vertical flip probability (leaves have no "up")
_C.AUG.VFLIP = 0.5
# Mixup alpha, mixup enabled if > 0 (targets are mixed as multi-hot vectors)
_C.AUG.MIXUP = 0.0
# Cutmix alpha, cutmix enabled if > 0
_C.AUG.CUTMIX = 0.0
# Cutmix min/max ratio, overrides alpha and enables cutmix if set
_C.AUG.CUTMIX_MINMAX = None
# Probability of performing mixup or cutmix when either/both is enabled
_C.AUG.MIXUP_PROB = 1.0
# Probability of switching to cutmix when both mixup and cutmix enabled
_C.AUG.MIXUP_SWITCH_PROB = 0.5
# How to apply mixup/cutmix params. Per "batch", "pair", or "elem"
_C.AUG.MIXUP_MODE = "batch"

# -----------------------------------------------------------------------------
# Testing settings
# -----------------------------------------------------------------------------
_C.TEST = CN()
# Whether to use center crop when testing (resize to IMG_SIZE/0.875 first)
_C.TEST.CROP = False

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
# Mixed precision with torch.amp (CUDA only; ignored on CPU)
_C.AMP_ENABLE = True
# Ours: autocast dtype on CUDA: 'bfloat16' (no scaler) or 'float16' (with GradScaler)
_C.AMP_DTYPE = "bfloat16"
# Kept for upstream commands: 'O0' disables AMP, anything else enables it
_C.AMP_OPT_LEVEL = ""
# Ours: keep the model in channels-last memory format (timm's --channels-last): convolutional backbones
# train 1.4x faster that way on a CPU too (tf_efficientnet_lite0 on 2 AVX2 cores); no effect on Swin
_C.CHANNELS_LAST = False
# Path to output folder, overwritten by command line argument
_C.OUTPUT = "output"
# Tag of experiment, overwritten by command line argument
_C.TAG = "default"
# Frequency (epochs) to save ckpt_epoch_N.pth (0 disables)
_C.SAVE_FREQ = 0
# Frequency (steps) to log info
_C.PRINT_FREQ = 10
# Fixed random seed
_C.SEED = 0
# Perform evaluation only, overwritten by command line argument
_C.EVAL_MODE = False
# Ours: 'auto' (CUDA when available), 'cpu' or 'cuda'
_C.DEVICE = "auto"
# Local rank for DistributedDataParallel, set from the environment by torchrun
_C.LOCAL_RANK = 0
# Ours: class names, in the order of the model outputs (read-only: data/labels.py)
_C.CLASSES = list(CLASSES)


# Keys that older yaml files and checkpoints may still set, and why they are gone.
REMOVED_KEYS = {
    "DATA.DATASET": "only the one-hot folder tree of process/prepare.py is read",
    "TRAIN.START_EPOCH": "a resumed run starts after its checkpoint's epoch",
    "TEST.SEQUENTIAL": "evaluation always visits every image once, in order",
    "TEST.SHUFFLE": "evaluation always visits every image once, in order",
    "TEST.THRESHOLD": "thresholds are tuned on validation (thresholds.json); evaluation.thresholds.DEFAULT_THRESHOLD "
                      "is the fallback",
    "THROUGHPUT_MODE": "img/s are measured by bench/throughput.py",
}
# Keys that were renamed: older yaml files, --opts and checkpoints still set them, read as the new name.
RENAMED_KEYS = {
    "MODEL.ARCFACE.FEATURE_DIM": "MODEL.PSA.OUT_DIM",  # the PSA neck's width, whatever the head
}
# PIL resampling filters by name, as timm's transforms take them
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")


def _dotted_keys(tree: dict, where: str, prefix: str = "") -> list[str]:
    """Every key of a nested dict as ``A.B.C``, parents included; a key that is not a name (yaml reads
    ``1:`` as a number) is a ValueError naming ``where``."""
    keys = []
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: {prefix}{key!r} is not a config key (keys are names)")
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, where, f"{prefix}{key}.")
    return keys


def _check_not_removed(keys: list[str], where: str) -> None:
    """A removed key is an error that says why it went, not yacs' bare 'Non-existent config key'."""
    for key in keys:
        if key in REMOVED_KEYS:
            raise ValueError(f"{where}: config key {key} was removed ({REMOVED_KEYS[key]}); delete it")


def _parent_of(tree: dict, key: str) -> tuple[dict | None, str]:
    """The nested dict that holds dotted ``key`` in ``tree`` (None when a parent is missing), and its last part."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def _drop_removed(saved: CN) -> None:
    """Remove the keys of REMOVED_KEYS from a checkpoint's saved config, so older checkpoints still load."""
    for key in REMOVED_KEYS:
        node, leaf = _parent_of(saved, key)
        if node is not None:
            node.pop(leaf, None)


def _rename_old_keys(tree: dict, where: str) -> None:
    """Move each RENAMED_KEYS key of a nested dict (a yaml file's or a checkpoint's config) to its new
    name, with a one-line note; the new name wins where both are set."""
    for old, new in RENAMED_KEYS.items():
        node, old_leaf = _parent_of(tree, old)
        if node is None or old_leaf not in node:
            continue
        value = node.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = tree
        for part in new_parents:
            target = target.setdefault(part, type(tree)())
        target.setdefault(new_leaf, value)
        logger.warning(f"{where}: config key {old} is now {new} (read as {new}: {value})")


def _rename_old_opts(opts: list) -> list:
    """``--opts`` with each RENAMED_KEYS key replaced by its new name, with a one-line note."""
    renamed = list(opts)
    for i in range(0, len(renamed) - 1, 2):
        if renamed[i] in RENAMED_KEYS:
            logger.warning(f"--opts: config key {renamed[i]} is now {RENAMED_KEYS[renamed[i]]}")
            renamed[i] = RENAMED_KEYS[renamed[i]]
    return renamed


CONFIG_SUFFIXES = (".yaml", ".yml")


def _check_yaml_name(cfg_file: str, named_by: str = "") -> None:
    """Only yaml is read: yacs would execute a ``.py`` config as code."""
    if os.path.splitext(cfg_file)[1].lower() not in CONFIG_SUFFIXES:
        where = f"{named_by}: BASE {cfg_file}" if named_by else cfg_file
        raise ValueError(f"{where}: not a yaml config (only {'/'.join(CONFIG_SUFFIXES)} files are read)")


def _read_yaml_config(cfg_file: str) -> dict:
    """The mapping of a yaml config file."""
    _check_yaml_name(cfg_file)
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{cfg_file}: no such config file")
    try:
        with open(cfg_file, "rb") as f:
            loaded = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{cfg_file}: not valid yaml{where} ({getattr(err, 'problem', None) or err})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{cfg_file}: a config is a mapping of KEY: value lines, not a {type(loaded).__name__}")
    return loaded


def _base_files(yaml_cfg: dict, cfg_file: str) -> list[str]:
    """The ``BASE:`` files of a config, as paths relative to the current directory."""
    bases = yaml_cfg.get("BASE", [""])
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ValueError(f"{cfg_file}: BASE must be a list of yaml files, got {bases!r}")
    bases = [base for base in bases if base]
    for base in bases:
        _check_yaml_name(base, named_by=cfg_file)
    return [os.path.join(os.path.dirname(cfg_file), base) for base in bases]


def _update_config_from_file(config: CN, cfg_file: str, including: tuple[str, ...] = ()) -> None:
    """Merge ``cfg_file`` into ``config``, its ``BASE:`` files first (``including``: the files that
    include it, to refuse a cycle instead of recursing forever)."""
    yaml_cfg = _read_yaml_config(cfg_file)
    chain = (*including, os.path.realpath(cfg_file))
    _rename_old_keys(yaml_cfg, cfg_file)
    _check_not_removed(_dotted_keys(yaml_cfg, cfg_file), cfg_file)
    for base in _base_files(yaml_cfg, cfg_file):
        if os.path.realpath(base) in chain:
            cycle = " -> ".join(os.path.basename(path) for path in (*chain, base))
            raise ValueError(f"{cfg_file}: BASE includes a file that includes it (a cycle: {cycle})")
        _update_config_from_file(config, base, chain)
    config.defrost()
    logger.debug(f"merge config from {cfg_file}")
    try:
        config.merge_from_other_cfg(CN(yaml_cfg))  # what yacs' merge_from_file does, without reading the file again
    except (KeyError, AssertionError, ValueError) as err:  # yacs: "Non-existent config key", "Type mismatch"
        raise ValueError(f"{cfg_file}: {err.args[0] if err.args else err}") from None
    config.freeze()


# (argparse attribute, config key) pairs copied when the attribute is set
_ARG_KEYS = (
    ("batch_size", "DATA.BATCH_SIZE"),
    ("data_path", "DATA.DATA_PATH"),
    ("fold", "DATA.FOLD"),
    ("pretrained", "MODEL.PRETRAINED"),
    ("resume", "MODEL.RESUME"),
    ("accumulation_steps", "TRAIN.ACCUMULATION_STEPS"),
    ("output", "OUTPUT"),
    ("tag", "TAG"),
    ("device", "DEVICE"),
    ("amp_opt_level", "AMP_OPT_LEVEL"),
)


def _merge_opts(config: CN, opts: list) -> None:
    """``--opts KEY VALUE ...``; an unknown key is a ValueError (yacs only asserts, which -O removes)."""
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got an odd number of items: {opts}")
    opts = _rename_old_opts(opts)
    _check_not_removed(list(opts[0::2]), "--opts")
    for key in opts[0::2]:
        node = config
        for part in key.split("."):
            if not isinstance(node, CN) or part not in node:
                raise ValueError(f"--opts: unknown config key {key}")
            node = node[part]
    try:
        config.merge_from_list(opts)
    except (ValueError, AssertionError) as err:  # yacs: "Type mismatch ... for config key: TRAIN.EPOCHS"
        raise ValueError(f"--opts: {err.args[0] if err.args else err}") from None


def update_config(config: CN, args: Any) -> None:
    """Apply ``--cfg``, ``--opts`` and the dedicated command-line flags, in that order."""
    if getattr(args, "cfg", None):
        _update_config_from_file(config, args.cfg)
    config.defrost()
    if getattr(args, "opts", None):
        _merge_opts(config, list(args.opts))
    for attr, key in _ARG_KEYS:
        value = getattr(args, attr, None)
        if value not in (None, ""):
            node, leaf = config, key.split(".")
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = value
    if getattr(args, "use_checkpoint", False):
        config.TRAIN.USE_CHECKPOINT = True
    if getattr(args, "eval", False):
        config.EVAL_MODE = True
    if config.AMP_OPT_LEVEL == "O0":
        config.AMP_ENABLE = False
    config.LOCAL_RANK = int(os.environ.get("LOCAL_RANK", getattr(args, "local_rank", 0) or 0))
    _check_config(config)
    config.freeze()


def _check_config(config: CN) -> None:
    """Reject settings that would silently train the wrong thing."""
    if config.MODEL.NUM_CLASSES != NUM_CLASSES or list(config.CLASSES) != list(CLASSES):
        raise ValueError(
            f"MODEL.NUM_CLASSES/CLASSES must be the {NUM_CLASSES} classes {list(CLASSES)}; "
            f"got {config.MODEL.NUM_CLASSES} / {list(config.CLASSES)}"
        )
    for key, value, allowed in (("MODEL.HEAD", config.MODEL.HEAD, HEADS), ("LOSS.NAME", config.LOSS.NAME, LOSSES),
                                ("MODEL.PSA.NECK", config.MODEL.PSA.NECK, PSA_NECKS)):
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    _check_run_dir_names(config)
    _check_counts(config)
    _check_augmentation(config.AUG)
    weights = list(config.LOSS.POS_WEIGHT)
    if weights and (len(weights) != NUM_CLASSES or min(weights) <= 0 or config.LOSS.NAME == "focal"):
        raise ValueError(f"LOSS.POS_WEIGHT must be [] or {NUM_CLASSES} positive numbers (bce, asl); got {weights} "
                         f"with LOSS.NAME {config.LOSS.NAME}")
    if config.LOSS.POS_WEIGHT_AUTO and config.LOSS.NAME == "focal":  # its counted weights would be refused above
        raise ValueError("LOSS.POS_WEIGHT_AUTO weighs the positives of bce or asl; focal weighs them by "
                         "LOSS.FOCAL_ALPHA")
    if config.DATA.FOLD < -1:
        raise ValueError(f"DATA.FOLD must be a fold number >= 0, or -1 for the train/val split; got {config.DATA.FOLD}")
    if config.DATA.SAMPLER_POWER < 0:
        raise ValueError(f"DATA.SAMPLER_POWER must be >= 0 (0: a plain shuffle), got {config.DATA.SAMPLER_POWER}")
    low = [k for k, v in config.DATA.OVERSAMPLE.items() if v < 1]
    if low:
        raise ValueError(f"DATA.OVERSAMPLE.{low[0]} must be an integer >= 1")
    _check_normalization(config.DATA)
    train = config.TRAIN
    _check_milestones(train)
    if train.BACKBONE_LR_SCALE < 0 or not 0 < train.LAYER_DECAY <= 1 or train.FREEZE_BACKBONE_EPOCHS < 0:
        raise ValueError("TRAIN.BACKBONE_LR_SCALE must be >= 0, TRAIN.LAYER_DECAY in (0, 1] and "
                         f"TRAIN.FREEZE_BACKBONE_EPOCHS >= 0; got {train.BACKBONE_LR_SCALE}, "
                         f"{train.LAYER_DECAY}, {train.FREEZE_BACKBONE_EPOCHS}")


def _check_milestones(train: CN) -> None:
    """TRAIN.LR_SCHEDULER.MILESTONES: given for multistep (only), increasing epochs after the warmup."""
    schedule, milestones = train.LR_SCHEDULER, list(train.LR_SCHEDULER.MILESTONES)
    if schedule.NAME == "multistep" and not milestones:
        raise ValueError("TRAIN.LR_SCHEDULER.NAME multistep needs TRAIN.LR_SCHEDULER.MILESTONES (epochs at which "
                         "the lr is multiplied by DECAY_RATE), e.g. [20, 30]")
    if milestones and schedule.NAME != "multistep":
        raise ValueError(f"TRAIN.LR_SCHEDULER.MILESTONES are for the multistep schedule, not {schedule.NAME!r}")
    if milestones and (milestones != sorted(set(milestones)) or milestones[0] <= train.WARMUP_EPOCHS
                       or milestones[-1] >= train.EPOCHS):
        raise ValueError(f"TRAIN.LR_SCHEDULER.MILESTONES must be increasing epochs after the warmup "
                         f"({train.WARMUP_EPOCHS}) and before TRAIN.EPOCHS ({train.EPOCHS}), got {milestones}")


def _check_run_dir_names(config: CN) -> None:
    """MODEL.NAME and TAG (--tag) are one folder name each, so that the run dir stays under OUTPUT."""
    for key, name in (("TAG (--tag)", config.TAG), ("MODEL.NAME", config.MODEL.NAME)):
        if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
            raise ValueError(f"{key} {name!r} must be a plain folder name (no '/', not '..'): the run dir is "
                             "OUTPUT/MODEL.NAME/TAG")


# Counts that only make sense from 1 (or 0) up: 0 epochs would exit 0 having trained nothing, a batch of
# 0 or PRINT_FREQ 0 would fail only after the data and the model are built.
_MINIMUMS = (("TRAIN.EPOCHS", 1), ("DATA.BATCH_SIZE", 1), ("TRAIN.ACCUMULATION_STEPS", 1), ("PRINT_FREQ", 1),
             ("DATA.NUM_WORKERS", 0), ("TRAIN.WARMUP_EPOCHS", 0), ("SAVE_FREQ", 0), ("TRAIN.PATIENCE", 0))


def _check_counts(config: CN) -> None:
    """Every key of _MINIMUMS at or above its minimum."""
    for key, minimum in _MINIMUMS:
        value = config
        for part in key.split("."):
            value = value[part]
        if value < minimum:
            raise ValueError(f"{key} must be >= {minimum}, got {value}")


def _check_normalization(data: CN) -> None:
    """DATA.MEAN / DATA.STD: empty or three numbers (std > 0); DATA.INTERPOLATION: empty or a PIL filter."""
    for key in ("MEAN", "STD"):
        values = list(data[key])
        if values and (len(values) != 3 or not all(isinstance(v, (int, float)) for v in values)):
            raise ValueError(f"DATA.{key} must be [] or three numbers (R, G, B), got {values}")
    if any(v <= 0 for v in data.STD):
        raise ValueError(f"DATA.STD must be positive, got {list(data.STD)}")
    if data.INTERPOLATION and data.INTERPOLATION not in INTERPOLATIONS:
        raise ValueError(f"DATA.INTERPOLATION {data.INTERPOLATION!r} is not one of {', '.join(INTERPOLATIONS)}")


def get_default_config() -> CN:
    """A copy of the defaults (unfrozen)."""
    return _C.clone()


def get_config(args: Any) -> CN:
    """Defaults, then ``args.cfg`` (with ``BASE:`` includes), then ``args.opts`` and flags; frozen."""
    config = _C.clone()
    update_config(config, args)
    return config


def config_from_string(text: str) -> CN:
    """Rebuild a frozen config from the yaml dump stored in a checkpoint (unknown keys are errors,
    keys removed since it was saved are dropped)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    config = _C.clone()
    saved = CN.load_cfg(text)
    _drop_removed(saved)
    _rename_old_keys(saved, "checkpoint config")
    for key, imagenet in (("MEAN", IMAGENET_DEFAULT_MEAN), ("STD", IMAGENET_DEFAULT_STD)):
        if key not in saved.get("DATA", {}):
            # saved before DATA.MEAN/STD existed, when every run was normalised with ImageNet's statistics
            config.DATA[key] = list(imagenet)
    config.merge_from_other_cfg(saved)
    _check_config(config)
    config.freeze()
    return config


def _check_augmentation(aug: CN) -> None:
    """AUG.* values torchvision would only reject at the first training batch."""
    if aug.PRESET not in AUG_PRESETS:
        raise ValueError(f"AUG.PRESET must be one of {', '.join(AUG_PRESETS)}, got {aug.PRESET!r}")
    scale = list(aug.AFFINE_SCALE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"AUG.AFFINE_SCALE must be [low, high] with 0 < low <= high, got {scale}")
    if not 0 <= aug.AFFINE_TRANSLATE <= 1 or not 0 <= aug.HUE <= 0.5:
        raise ValueError(f"AUG.AFFINE_TRANSLATE must be in [0, 1] and AUG.HUE in [0, 0.5]; got "
                         f"{aug.AFFINE_TRANSLATE}, {aug.HUE}")
