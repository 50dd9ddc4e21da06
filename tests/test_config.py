"""Config merging: defaults <- yaml (with BASE includes) <- --opts <- flags; strict keys; 6 classes."""
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from config import REMOVED_KEYS, _update_config_from_file, config_from_string, get_config, get_default_config
from data.labels import CLASSES
from data.transforms import resolve_normalization

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
# The configs the README and the docs name: each must be there and load (any other shipped yaml must load too).
SHIPPED = ("swin_tiny_patch4_window7_224.yaml", "swin_tiny_focal.yaml", "arcpsa_swin.yaml", "arcpsa_swin_base_384.yaml",
           "demo_cpu.yaml", "effnet_lite0_cpu.yaml", "arcpsa_effnet_lite0_cpu.yaml", "effnet_lite2_gpu.yaml")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def child_yaml(tmp_path: Path) -> Path:
    """child.yaml includes sub/base.yaml (a relative path), then overrides part of it."""
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "base.yaml",
          "MODEL:\n  NAME: base\n  HEAD: arcface\n  DROP_RATE: 0.3\nDATA:\n  IMG_SIZE: 96\n")
    return write(tmp_path / "child.yaml",
                 "BASE: ['sub/base.yaml']\nMODEL:\n  NAME: child\nDATA:\n  IMG_SIZE: 128\n")


def test_yaml_with_base_then_opts_then_flags(child_yaml: Path):
    args = Namespace(cfg=str(child_yaml), opts=["DATA.IMG_SIZE", "160", "LOSS.NAME", "focal"],
                     batch_size=7, tag="t1")
    config = get_config(args)
    assert config.MODEL.HEAD == "arcface" and config.MODEL.DROP_RATE == 0.3  # from base
    assert config.MODEL.NAME == "child"  # child over base
    assert config.DATA.IMG_SIZE == 160 and config.LOSS.NAME == "focal"  # opts over yaml
    assert config.DATA.BATCH_SIZE == 7 and config.TAG == "t1"  # flags
    assert config.TRAIN.EPOCHS == get_default_config().TRAIN.EPOCHS  # untouched default
    assert config.is_frozen()


def test_amp_opt_level_o0_disables_amp():
    assert get_config(Namespace(amp_opt_level="O0")).AMP_ENABLE is False


@pytest.mark.parametrize("text", ["MODEL:\n  NOT_A_KEY: 1\n", "NOT_A_SECTION:\n  X: 1\n"])
def test_unknown_yaml_key_is_an_error(tmp_path: Path, text: str):
    with pytest.raises(ValueError, match="bad.yaml: .*NOT_A"):
        get_config(Namespace(cfg=str(write(tmp_path / "bad.yaml", text))))


def test_missing_config_file_is_an_error_naming_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such config file"):
        get_config(Namespace(cfg=str(tmp_path / "nope.yaml")))


def test_unknown_opts_key_is_an_error():
    with pytest.raises(ValueError, match="MODEL.NOT_A_KEY"):
        get_config(Namespace(opts=["MODEL.NOT_A_KEY", "1"]))


def test_num_classes_cannot_become_1000(tmp_path: Path):
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        get_config(Namespace(opts=["MODEL.NUM_CLASSES", "1000"]))
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        get_config(Namespace(cfg=str(write(tmp_path / "in1k.yaml", "MODEL:\n  NUM_CLASSES: 1000\n"))))


@pytest.mark.parametrize("opts, key", [(["MODEL.HEAD", "softmax"], "MODEL.HEAD"),
                                       (["LOSS.NAME", "ce"], "LOSS.NAME"),
                                       (["DATA.OVERSAMPLE.complex", "0"], "OVERSAMPLE"),
                                       (["DATA.MEAN", "[0.5, 0.5]"], "DATA.MEAN"),
                                       (["DATA.STD", "[0.5, 0.0, 0.5]"], "DATA.STD must be positive"),
                                       (["DATA.INTERPOLATION", "cubic"], "DATA.INTERPOLATION 'cubic'"),
                                       (["TRAIN.LAYER_DECAY", "1.5"], "TRAIN.LAYER_DECAY"),
                                       (["TRAIN.FREEZE_BACKBONE_EPOCHS", "-1"], "FREEZE_BACKBONE_EPOCHS"),
                                       # counts that would train nothing, or fail only once everything is built
                                       (["TRAIN.EPOCHS", "0"], "TRAIN.EPOCHS must be >= 1, got 0"),
                                       (["DATA.BATCH_SIZE", "0"], "DATA.BATCH_SIZE must be >= 1"),
                                       (["TRAIN.ACCUMULATION_STEPS", "0"], "TRAIN.ACCUMULATION_STEPS must be >= 1"),
                                       (["PRINT_FREQ", "0"], "PRINT_FREQ must be >= 1"),
                                       (["DATA.NUM_WORKERS", "-1"], "DATA.NUM_WORKERS must be >= 0"),
                                       # a type yacs cannot coerce, named with its source
                                       (["TRAIN.EPOCHS", "abc"], "--opts: Type mismatch .* TRAIN.EPOCHS")])
def test_bad_values_are_errors(opts: list, key: str):
    with pytest.raises(ValueError, match=key):
        get_config(Namespace(opts=opts))


def test_oversample_from_yaml(tmp_path: Path):
    config = get_config(Namespace(cfg=str(write(tmp_path / "o.yaml", "DATA:\n  OVERSAMPLE: {complex: 5}\n"))))
    assert config.DATA.OVERSAMPLE.complex == 5 and config.DATA.OVERSAMPLE.scab == 1


def test_upstream_swin_yaml_loads(tmp_path: Path):
    """The shape of Microsoft's configs/swin/swin_tiny_patch4_window7_224.yaml."""
    text = ("MODEL:\n  TYPE: swin\n  NAME: swin_tiny_patch4_window7_224\n  DROP_PATH_RATE: 0.2\n"
            "  SWIN:\n    EMBED_DIM: 96\n    DEPTHS: [ 2, 2, 6, 2 ]\n    NUM_HEADS: [ 3, 6, 12, 24 ]\n"
            "    WINDOW_SIZE: 7\n")
    config = get_config(Namespace(cfg=str(write(tmp_path / "upstream.yaml", text))))
    assert config.MODEL.TYPE == "swin" and list(config.MODEL.SWIN.DEPTHS) == [2, 2, 6, 2]


@pytest.mark.parametrize("name", sorted({*SHIPPED, *(p.name for p in CONFIGS)}))
def test_every_shipped_config_loads(name: str):
    """A named config that is missing fails here (no such config file), as does one that does not load."""
    config = get_config(Namespace(cfg=str(CONFIG_DIR / name)))
    assert config.MODEL.NUM_CLASSES == len(CLASSES) and list(config.CLASSES) == list(CLASSES)
    assert config.MODEL.NAME and config_from_string(config.dump()) == config


def test_headline_configs():
    arc = get_config(Namespace(cfg=str(CONFIG_DIR / "arcpsa_swin.yaml")))
    assert (arc.MODEL.NAME, arc.MODEL.HEAD, arc.MODEL.PSA.ENABLE) == ("arcpsa_swin_tiny", "arcface", True)
    base = get_config(Namespace(cfg=str(CONFIG_DIR / "arcpsa_swin_base_384.yaml")))
    assert (base.MODEL.TYPE, base.MODEL.SWIN.WINDOW_SIZE, base.DATA.IMG_SIZE) == (
        "swin_base_patch4_window12_384", 12, 384)
    assert base.MODEL.HEAD == "arcface" and base.MODEL.PSA.ENABLE
    focal = get_config(Namespace(cfg=str(CONFIG_DIR / "swin_tiny_focal.yaml")))
    assert focal.LOSS.NAME == "focal" and focal.MODEL.TYPE == "swin_tiny_patch4_window7_224"


def test_config_from_string_round_trip(child_yaml: Path):
    config = get_config(Namespace(cfg=str(child_yaml), opts=["DATA.OVERSAMPLE.complex", "3"]))
    again = config_from_string(config.dump())
    assert again == config and again.is_frozen()


def with_old_width_key(dump: str) -> str:
    """A config dump as checkpoints saved it before the neck width was renamed (MODEL.ARCFACE.FEATURE_DIM)."""
    tree = yaml.safe_load(dump)
    tree["MODEL"]["ARCFACE"]["FEATURE_DIM"] = tree["MODEL"]["PSA"].pop("OUT_DIM")
    return yaml.safe_dump(tree)


def test_the_old_neck_width_key_still_loads_with_one_note(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    old = write(tmp_path / "old.yaml", "MODEL:\n  ARCFACE:\n    FEATURE_DIM: 64\n")
    saved = get_default_config()
    saved.MODEL.PSA.OUT_DIM = 48
    with caplog.at_level("WARNING", logger="config"):
        from_yaml = get_config(Namespace(cfg=str(old)))
        from_opts = get_config(Namespace(opts=["MODEL.ARCFACE.FEATURE_DIM", "80"]))
        from_checkpoint = config_from_string(with_old_width_key(saved.dump()))
    assert (from_yaml.MODEL.PSA.OUT_DIM, from_opts.MODEL.PSA.OUT_DIM, from_checkpoint.MODEL.PSA.OUT_DIM) == (64, 80, 48)
    assert "FEATURE_DIM" not in from_checkpoint.MODEL.ARCFACE
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 3 and all("MODEL.ARCFACE.FEATURE_DIM is now MODEL.PSA.OUT_DIM" in n for n in notes)
    assert notes[0].startswith(f"{old}: ")
    both = write(tmp_path / "both.yaml", "MODEL:\n  ARCFACE: {FEATURE_DIM: 64}\n  PSA: {OUT_DIM: 96}\n")
    assert get_config(Namespace(cfg=str(both))).MODEL.PSA.OUT_DIM == 96  # the new name wins


def test_a_checkpoint_saved_with_the_old_width_key_predicts_as_it_did(tmp_path: Path):
    import torch

    from evaluation.inference import Predictor
    from models import build_model

    config = get_default_config()
    config.merge_from_list(["MODEL.TYPE", "test_resnet", "DATA.IMG_SIZE", 64, "MODEL.PSA.ENABLE", True,
                            "MODEL.PSA.OUT_DIM", 48])
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "config": with_old_width_key(config.dump()),
                "thresholds": [0.5] * len(CLASSES)}, path)
    images = torch.rand(2, 3, 64, 64)
    loaded = Predictor.from_checkpoint(path, torch.device("cpu"))
    with torch.no_grad():
        assert loaded.config.MODEL.PSA.OUT_DIM == 48 and torch.equal(loaded.model(images), model(images))


def test_config_from_string_rejects_unknown_keys():
    with pytest.raises(KeyError):
        config_from_string(get_default_config().dump() + "NOT_A_KEY: 1\n")


# The normalisation each backbone's ImageNet weights were trained with (timm pretrained_cfg).
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
HALF = ([0.5] * 3, [0.5] * 3)


@pytest.mark.parametrize("model_type, expected", [("tf_efficientnet_lite0", HALF), ("tf_efficientnet_lite2", HALF),
                                                  ("swin_tiny_patch4_window7_224", IMAGENET), ("swin", IMAGENET),
                                                  ("efficientnet_lite0", IMAGENET)])
def test_normalisation_is_resolved_from_the_backbone_into_the_config(model_type, expected):
    config = resolve_normalization(get_config(Namespace(opts=["MODEL.TYPE", model_type])))
    assert [*config.DATA.MEAN, *config.DATA.STD] == pytest.approx([*expected[0], *expected[1]])
    assert config.DATA.INTERPOLATION == "bicubic"
    assert config_from_string(config.dump()) == config  # the resolved values travel in the dump


def test_normalisation_keys_override_the_backbone_one_by_one():
    config = resolve_normalization(get_config(Namespace(opts=[
        "MODEL.TYPE", "tf_efficientnet_lite0", "DATA.MEAN", "[0.4, 0.45, 0.5]", "DATA.INTERPOLATION", "bilinear"])))
    assert config.DATA.MEAN == pytest.approx([0.4, 0.45, 0.5])
    assert config.DATA.STD == pytest.approx(HALF[1])
    assert config.DATA.INTERPOLATION == "bilinear"


def test_transform_normalises_an_unresolved_config_like_a_resolved_one():
    """Code that builds a config by hand (get_default_config) gets the backbone's values too."""
    from data.transforms import normalization

    raw = get_default_config()
    raw.merge_from_list(["MODEL.TYPE", "tf_efficientnet_lite0"])
    assert raw.DATA.MEAN == [] and normalization(raw) == ((0.5,) * 3, (0.5,) * 3, "bicubic")


def test_checkpoint_config_from_before_the_normalisation_keys_keeps_imagenet():
    """Runs saved before DATA.MEAN existed were all normalised with ImageNet's statistics."""
    config = resolve_normalization(get_config(Namespace(opts=["MODEL.TYPE", "tf_efficientnet_lite0"])))
    lines = config.dump().splitlines()
    for key in ("  MEAN:", "  STD:"):  # drop the key and its three items
        start = lines.index(key)
        lines = lines[:start] + lines[start + 4:]
    old = "\n".join(lines)
    assert "MEAN" not in old and "STD" not in old
    restored = config_from_string(old)
    assert [*restored.DATA.MEAN, *restored.DATA.STD] == pytest.approx([*IMAGENET[0], *IMAGENET[1]])
    assert config_from_string(config.dump()).DATA.MEAN == pytest.approx(HALF[0])


def test_effnet_recipes():
    """The CPU recipes: packaged Lite0 weights, its normalisation, a frozen first epoch; four heads, four run dirs."""
    recipes = {name: resolve_normalization(get_config(Namespace(cfg=str(CONFIG_DIR / f"{name}.yaml")))) for name in (
        "effnet_lite0_cpu", "focal_effnet_lite0_cpu", "arcface_effnet_lite0_cpu", "arcpsa_effnet_lite0_cpu")}
    heads = {name: (c.MODEL.HEAD, c.MODEL.PSA.ENABLE, c.LOSS.NAME) for name, c in recipes.items()}
    assert heads == {"effnet_lite0_cpu": ("linear", False, "bce"), "focal_effnet_lite0_cpu": ("linear", False, "focal"),
                     "arcface_effnet_lite0_cpu": ("arcface", False, "bce"),
                     "arcpsa_effnet_lite0_cpu": ("arcface", True, "bce")}
    assert len({c.MODEL.NAME for c in recipes.values()}) == 4
    for config in recipes.values():
        assert (config.MODEL.TYPE, config.MODEL.PRETRAINED) == ("tf_efficientnet_lite0", "efficientnet_lite0")
        assert config.DATA.MEAN == config.DATA.STD == [0.5] * 3 and config.TRAIN.FREEZE_BACKBONE_EPOCHS == 1
    gpu = get_config(Namespace(cfg=str(CONFIG_DIR / "effnet_lite2_gpu.yaml")))
    assert (gpu.MODEL.TYPE, gpu.MODEL.PRETRAINED, gpu.DATA.IMG_SIZE) == (
        "tf_efficientnet_lite2", "efficientnet_lite2", 260)
    assert gpu.BASE == ["effnet_lite_finetune.yaml"]  # a shared base, not the CPU recipe's CPU-specific keys
    assert (gpu.DATA.NUM_WORKERS, gpu.AMP_ENABLE, gpu.AUG.AUTO_AUGMENT) == (8, True, "rand-m9-mstd0.5-inc1")


def test_a_config_loads_without_torch_timm_models_or_data_loading():
    """Reading a config (what finding a run dir needs) must not pay for torch or timm's model registry."""
    code = ("import sys; from argparse import Namespace; from config import get_config; "
            f"get_config(Namespace(cfg={str(CONFIG_DIR / 'arcpsa_swin.yaml')!r})); "
            "heavy = ('torch', 'timm', 'models', 'data.transforms', 'data.dataset'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=CONFIG_DIR.parent, env={**os.environ, "PYTHONPATH": str(CONFIG_DIR.parent)})
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_removed_keys_are_a_clear_error_in_yaml_and_opts(tmp_path: Path, key: str):
    *parents, leaf = key.split(".")
    text = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(parents)) + f"{'  ' * len(parents)}{leaf}: 1\n"
    old = write(tmp_path / "old.yaml", text)
    with pytest.raises(ValueError, match=rf"old\.yaml: config key {key} was removed \(.+\); delete it"):
        get_config(Namespace(cfg=str(old)))
    with pytest.raises(ValueError, match=rf"--opts: config key {key} was removed"):
        get_config(Namespace(opts=[key, "1"]))


def test_checkpoint_configs_with_removed_keys_still_load():
    dump = get_default_config().dump()
    old = dump.replace("DATA:\n", "DATA:\n  DATASET: plant_pathology_2021\n").replace(
        "TEST:\n", "TEST:\n  SEQUENTIAL: true\n  SHUFFLE: false\n  THRESHOLD: 0.5\n") + "THROUGHPUT_MODE: false\n"
    assert "DATASET" in old and config_from_string(old).dump() == config_from_string(dump).dump()


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "OVERSAMPLE":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_yaml_states_only_what_differs_from_its_base(path: Path):
    """A key restated at its base's value is noise a reader must check; the base is config.py's defaults
    plus the yaml's BASE files."""
    raw = yaml.safe_load(path.read_text())
    base = get_default_config()
    for name in raw.get("BASE", []):
        _update_config_from_file(base, str(path.parent / name))
    restated = []
    for key, value in _flat({k: v for k, v in raw.items() if k != "BASE"}).items():
        node = base
        for part in key.split("."):
            node = node[part]
        if list(node) == list(value) if isinstance(node, (list, tuple)) else node == value:
            restated.append(key)
    assert not restated, f"{path.name} restates its base's values: {restated}"


# Config files that are not a mapping of known keys: each one line naming the file (file name -> text, match).
BAD_YAML = {
    "syntax": ("MODEL: [\n", r"bad\.yaml: not valid yaml at line 2"),
    "list": ("- 1\n- 2\n", r"bad\.yaml: a config is a mapping of KEY: value lines, not a list"),
    "scalar": ("just text\n", r"bad\.yaml: a config is a mapping .* not a str"),
    "type_mismatch": ("TRAIN:\n  EPOCHS: abc\n", r"bad\.yaml: Type mismatch .* TRAIN\.EPOCHS"),
    "number_key": ("1: 2\n", r"bad\.yaml: 1 is not a config key"),
    "base_not_a_list": ("BASE: other.yaml\n", r"bad\.yaml: BASE must be a list of yaml files"),
    "base_cycle": ("BASE: ['bad.yaml']\n", r"bad\.yaml: BASE includes a file that includes it \(a cycle: "
                                           r"bad\.yaml -> bad\.yaml\)"),
}


@pytest.mark.parametrize("text, message", BAD_YAML.values(), ids=list(BAD_YAML))
def test_bad_yaml_is_one_error_naming_the_file(tmp_path: Path, text: str, message: str):
    with pytest.raises(ValueError, match=message):
        get_config(Namespace(cfg=str(write(tmp_path / "bad.yaml", text))))


def test_a_base_cycle_through_another_file_is_named(tmp_path: Path):
    """a -> b -> a recursed until Python's RecursionError; a diamond (two bases sharing one) is no cycle."""
    write(tmp_path / "a.yaml", "BASE: ['b.yaml']\n")
    write(tmp_path / "b.yaml", "BASE: ['a.yaml']\n")
    with pytest.raises(ValueError, match=r"b\.yaml: .*a cycle: a\.yaml -> b\.yaml -> a\.yaml"):
        get_config(Namespace(cfg=str(tmp_path / "a.yaml")))
    write(tmp_path / "common.yaml", "DATA:\n  IMG_SIZE: 96\n")
    write(tmp_path / "left.yaml", "BASE: ['common.yaml']\n")
    write(tmp_path / "right.yaml", "BASE: ['common.yaml']\nMODEL:\n  NAME: right\n")
    diamond = get_config(Namespace(cfg=str(write(tmp_path / "top.yaml", "BASE: ['left.yaml', 'right.yaml']\n"))))
    assert (diamond.DATA.IMG_SIZE, diamond.MODEL.NAME) == (96, "right")


@pytest.mark.parametrize("suffix", [".py", ".txt", ""])
def test_only_yaml_files_are_read_so_a_python_config_never_runs(tmp_path: Path, suffix: str):
    """yacs executes a .py config; one named by --cfg or in BASE: is refused before it is opened (this one is
    a yaml mapping too, as an attacker would write it, so that it reaches yacs)."""
    marker = tmp_path / "ran"
    code = write(tmp_path / f"evil{suffix}", f"ran: str = open({str(marker)!r}, 'w').name\n")
    with pytest.raises(ValueError, match=rf"evil{re.escape(suffix)}: not a yaml config"):
        get_config(Namespace(cfg=str(code)))
    innocent = write(tmp_path / "innocent.yml", f"BASE: ['{code.name}']\n")
    with pytest.raises(ValueError, match=rf"innocent\.yml: BASE evil{re.escape(suffix)}: not a yaml config"):
        get_config(Namespace(cfg=str(innocent)))
    assert not marker.exists()


@pytest.mark.parametrize("opts", [["TAG", "../../.."], ["TAG", "a/b"], ["TAG", ".."], ["MODEL.NAME", "../elsewhere"]])
def test_run_dir_names_cannot_leave_output(opts: list):
    with pytest.raises(ValueError, match=r"must be a plain folder name"):
        get_config(Namespace(opts=opts))
    if opts[0] == "TAG":  # --tag, as main.py and test.py pass it
        with pytest.raises(ValueError, match=r"TAG \(--tag\)"):
            get_config(Namespace(tag=opts[1]))
