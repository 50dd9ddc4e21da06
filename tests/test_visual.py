"""explain/gradcam.py: per-class Grad-CAM maps on Swin (linear, ArcFace + PSA) and a CNN, and the files it writes."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.dataset import MultiLabelImageFolder
from data.images import load_image
from data.labels import CLASSES
from data.transforms import build_transform
from evaluation import inference
from explain import gradcam
from helpers import (
    CNN,
    ODD_PHOTO_SIZE,
    copy_runs,
    draw_leaf,
    load_run,
    load_script,
    make_tree,
    odd_leaf_photo,
    tiny_runs,
    train_a_little,
)
from models import build_model
from training.checkpoint import model_state
from training.rundir import RunDir
from utils.files import atomic_save

visual_script = load_script("visual.py")

MODELS = {"cnn": (tuple(CNN), 0)}  # (opts, training steps), beside the shared Swins
IMAGE_SIZE = ODD_PHOTO_SIZE


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_tree, tiny_swin_runs) -> dict[str, Path]:
    """One saved run per model kind: copies of the shared Swins (visual.py writes into a run) and a CNN."""
    output = tmp_path_factory.mktemp("cam_output")
    return {**copy_runs(tiny_swin_runs, output), **tiny_runs(output, tiny_tree, MODELS, [0.5] * len(CLASSES))}


@pytest.fixture(scope="session")
def leaf(tmp_path_factory) -> Path:
    return odd_leaf_photo(tmp_path_factory.mktemp("leaves"))


@pytest.mark.parametrize("kind", list(MODELS))
def test_maps_have_the_image_size_and_differ_between_classes(runs, leaf, kind):
    loaded = load_run(runs[kind])
    cam = gradcam.build_cam(loaded.model)
    image = load_image(leaf)
    maps, probs = gradcam.class_maps(cam, image, build_transform(False, loaded.config), range(len(CLASSES)))
    assert maps.shape == (len(CLASSES), IMAGE_SIZE[1], IMAGE_SIZE[0])
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # A class with no positive evidence anywhere gets Grad-CAM's all-zero map; the others must vary
    # over the image and tell the classes apart.
    varying = [m for m in maps if m.std() > 0.01]
    assert len(varying) >= 2
    assert all(np.abs(a - b).max() > 0.1 for i, a in enumerate(varying) for b in varying[i + 1:])
    expected = torch.sigmoid(loaded.model(build_transform(False, loaded.config)(image)[None]))[0]
    np.testing.assert_allclose(probs, expected.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["swin", "arcpsa"])
def test_map_i_belongs_to_class_i(runs, leaf, kind):
    """One call for every class equals one call per class, and asking in reverse order reverses the maps."""
    loaded = load_run(runs[kind])
    cam = gradcam.build_cam(loaded.model)
    image, transform = load_image(leaf), build_transform(False, loaded.config)
    every = list(range(len(CLASSES)))
    maps, _ = gradcam.class_maps(cam, image, transform, every)
    for c in every:
        single, _ = gradcam.class_maps(cam, image, transform, [c])
        np.testing.assert_allclose(maps[c], single[0], atol=1e-4, err_msg=CLASSES[c])
    backwards, _ = gradcam.class_maps(cam, image, transform, every[::-1])
    np.testing.assert_allclose(backwards[::-1], maps, atol=1e-4)


def test_grad_cam_differentiates_the_evaluation_logits_of_test_py(runs, leaf):
    loaded = load_run(runs["arcpsa"])
    transform = build_transform(False, loaded.config)
    images = [load_image(leaf), draw_leaf("healthy", random.Random(5))]
    batch = torch.stack([transform(image) for image in images])
    cam = gradcam.build_cam(loaded.model)
    wrapped = cam.model(batch)
    logits, _ = inference.predict_logits(loaded.model, DataLoader(list(zip(batch, [0, 0])), batch_size=2),
                                   torch.device("cpu"))
    assert torch.allclose(wrapped, torch.from_numpy(logits).float(), atol=1e-5)
    head = loaded.model.head
    cosine = head.cosine(loaded.model.features(batch))
    assert torch.allclose(wrapped, head.scale * cosine, atol=1e-5)  # SCALE * cos(theta): no margin, no label
    targets = torch.ones_like(wrapped)
    with torch.no_grad():
        margin_logits = loaded.model.train()(batch, targets)
    loaded.model.eval()
    assert (margin_logits < wrapped - 1e-3).all()  # the margin is a training-only term


def test_default_target_layers(runs):
    swin, cnn = load_run(runs["swin"]).model, load_run(runs["cnn"]).model
    assert gradcam.find_module(swin, gradcam.default_target_layer(swin)) is swin.backbone.layers[-1].blocks[-1].norm1
    assert gradcam.reshape_for(swin, swin.backbone.layers[-1].blocks[-1].norm1) is gradcam.nhwc_to_nchw
    assert gradcam.default_target_layer(cnn) == "backbone.layer4"
    assert gradcam.reshape_for(cnn, cnn.backbone.layer4) is None


def test_psa_neck_layer_is_channels_first(runs, leaf):
    loaded = load_run(runs["arcpsa"])
    assert gradcam.reshape_for(loaded.model, loaded.model.neck.psa) is None
    cam = gradcam.build_cam(loaded.model, target_layer="neck.psa")
    maps, _ = gradcam.class_maps(cam, load_image(leaf), build_transform(False, loaded.config), [0, 5])
    assert maps.shape == (2, IMAGE_SIZE[1], IMAGE_SIZE[0]) and maps.std() > 0


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "eigencam"])
def test_other_methods(runs, leaf, method):
    loaded = load_run(runs["swin"])
    cam = gradcam.build_cam(loaded.model, method)
    maps, _ = gradcam.class_maps(cam, load_image(leaf), build_transform(False, loaded.config), [0, 4, 5])
    assert maps.shape == (3, IMAGE_SIZE[1], IMAGE_SIZE[0]) and maps.max() > 0


def test_wrong_target_layer_lists_nearby_names(runs):
    model = load_run(runs["swin"]).model
    with pytest.raises(ValueError, match=r"'backbone.layers.1.blocks.0.nrm1'.*backbone\.layers\.1\.blocks\.0\.norm1"):
        gradcam.build_cam(model, target_layer="backbone.layers.1.blocks.0.nrm1")
    with pytest.raises(ValueError, match="nearby names: .*backbone.layers"):
        gradcam.build_cam(model, target_layer="backbone.layer[5]")


def test_cli_writes_overlays_grid_and_gif(runs, leaf, tmp_path, capsys):
    run = runs["arcpsa"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert visual_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--images", str(leaf), str(broken),
                        "--classes", "scab", "rust", "--gif", "--device", "cpu"]) == 0
    out = run / "cam"
    written = {"leaf_rust.png", "leaf_scab.png", "leaf_grid.png", "leaf.gif"}
    assert written <= {p.name for p in out.iterdir()}
    printed = capsys.readouterr().out
    assert "broken.png: skipped" in printed and all(name in printed for name in written)
    for name in ("leaf_rust.png", "leaf_scab.png"):
        assert Image.open(out / name).size == IMAGE_SIZE
    rust, scab = (np.asarray(Image.open(out / f"leaf_{c}.png"), dtype=int) for c in ("rust", "scab"))
    assert np.abs(rust - scab).max() > 0
    with Image.open(out / "leaf.gif") as gif:
        assert gif.n_frames == 2
    assert Image.open(out / "leaf_grid.png").size[0] > IMAGE_SIZE[0]



def test_cli_keeps_images_of_the_same_name_apart(runs, tmp_path):
    for folder, labels in (("a", "rust"), ("b", "scab")):
        (tmp_path / folder).mkdir()
        draw_leaf(labels, random.Random(3)).save(tmp_path / folder / "leaf.jpg")
    out = tmp_path / "cam"
    assert visual_script.main(["--checkpoint", str(runs["swin"] / "ckpt_best.pth"), "--images", str(tmp_path / "a"),
                        str(tmp_path / "b"), "--classes", "rust", "--output", str(out), "--device", "cpu"]) == 0
    assert {p.name for p in out.glob("*_rust.png")} == {"leaf_rust.png", "b_leaf_rust.png"}

def test_cli_rejects_unknown_class(runs, leaf):
    with pytest.raises(ValueError, match="unknown label 'blight'"):
        visual_script.main(["--checkpoint", str(runs["swin"] / "ckpt_best.pth"), "--images", str(leaf),
                     "--classes", "blight"])


def test_large_photos_are_shrunk_to_max_side(runs, tmp_path):
    photo = tmp_path / "big.jpg"
    draw_leaf("rust", random.Random(2), size=(300, 200)).save(photo)
    out = tmp_path / "cam"
    assert visual_script.main(["--checkpoint", str(runs["swin"] / "ckpt_best.pth"), "--images", str(photo),
                        "--classes", "rust", "--max-side", "120", "--output", str(out), "--device", "cpu"]) == 0
    assert Image.open(out / "big_rust.png").size == (120, 80)


def test_visual_on_an_ensemble_explains_the_chosen_member_and_says_so(runs, leaf, tmp_path):
    """--member 2 of an ensemble file: the maps are that member's (its file's maps, pixel for pixel)."""
    from evaluation.ensemble_file import Ensemble

    members = (runs["swin"] / "ckpt_best.pth", runs["cnn"] / "ckpt_best.pth")
    path = tmp_path / "ensemble.json"
    Ensemble(path, members, (1.0, 1.0), True, None).write()
    args = ["--images", str(leaf), "--classes", "scab", "--device", "cpu"]
    assert visual_script.main(["--checkpoint", str(path), "--member", "2", "--output", str(tmp_path / "ens"),
                               *args]) == 0
    assert visual_script.main(["--checkpoint", str(members[1]), "--output", str(tmp_path / "cnn"), *args]) == 0
    ensemble_map = np.asarray(Image.open(tmp_path / "ens" / "leaf_scab.png"))
    np.testing.assert_array_equal(ensemble_map, np.asarray(Image.open(tmp_path / "cnn" / "leaf_scab.png")))
    assert "Grad-CAM of member 2" in (tmp_path / "ens" / "log.txt").read_text()
    with pytest.raises(ValueError, match=r"ensemble.json: --member 3, but the ensemble has members 1 to 2"):
        visual_script.main(["--checkpoint", str(path), "--member", "3", *args])


def test_visual_without_images_explains_the_first_test_leaf_of_each_class(tmp_path):
    """As the upstream fork's visual.py: no --images takes the run's own data path's test split."""
    tree = make_tree(tmp_path / "tree", {"train": 6, "test": 18})
    run = tiny_runs(tmp_path / "out", tree, {"plain": ((), 0)}, [0.5] * len(CLASSES))["plain"]
    leaves = visual_script.example_leaves(str(tree))
    truth = {Path(p).name: t for p, t in MultiLabelImageFolder(tree / "test").samples}
    covered = {c for p in leaves for c in range(len(CLASSES)) if truth[Path(p).name][c] > 0.5}
    assert covered == {c for t in truth.values() for c in range(len(CLASSES)) if t[c] > 0.5}
    assert len(leaves) <= len(CLASSES)
    assert visual_script.main(["--checkpoint", str(run / "ckpt_best.pth"),
                               "--classes", "scab", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (run / "cam").glob("*_scab.png")) == sorted(
        f"{Path(p).stem}_scab.png" for p in leaves)
    with pytest.raises(FileNotFoundError, match=r"no test split to take example leaves from; give --images"):
        visual_script.example_leaves(str(tmp_path / "out"))


def test_epochs_walks_the_epoch_checkpoints_in_epoch_order(runs, tiny_tree, leaf, tmp_path, monkeypatch):
    """--epochs: one row of per-class maps per ckpt_epoch_N.pth, epoch 2 before epoch 10, the GIF a frame each;
    the maps change as the weights do."""
    run = copy_runs({"run": runs["swin"]}, tmp_path)["run"]
    config = inference.Predictor.from_checkpoint(run / "ckpt_best.pth", torch.device("cpu")).config
    for epoch, steps in ((10, 30), (2, 3), (1, 0)):
        torch.manual_seed(0)
        model = train_a_little(build_model(config), tiny_tree / "train", config, steps)
        atomic_save(model_state(config, model, [0.5] * len(CLASSES)), run / f"ckpt_epoch_{epoch}.pth")
    assert [p.name for p in RunDir(run).epoch_checkpoints()] == [f"ckpt_epoch_{e}.pth" for e in (1, 2, 10)]
    drawn = spy_on_sheets(monkeypatch)
    out = tmp_path / "cam"
    assert visual_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--images", str(leaf), "--epochs",
                               "--classes", "scab", "rust", "--output", str(out), "--device", "cpu"]) == 0
    rows, titles = drawn[-1]
    assert [t for t, _ in titles] == ["epoch 1", "epoch 2", "epoch 10"] and [len(r) for r in rows] == [2, 2, 2]
    assert [[tile.title.split()[0] for tile in r] for r in rows] == [["rust", "scab"]] * 3  # in class order
    assert not np.array_equal(rows[0][0].picture, rows[2][0].picture)
    with Image.open(out / "leaf_epochs.gif") as gif:
        assert gif.n_frames == 3
    assert (out / "leaf_epochs.png").is_file()
    with pytest.raises(FileNotFoundError, match="no ckpt_epoch_N.pth to walk"):
        visual_script.main(["--checkpoint", str(runs["cnn"] / "ckpt_best.pth"), "--images", str(leaf), "--epochs",
                            "--output", str(tmp_path / "none")])


def test_several_target_layers_are_drawn_side_by_side(runs, leaf, tmp_path, monkeypatch):
    drawn = spy_on_sheets(monkeypatch)
    layers = ["backbone.layers[0]", "backbone.layers[-1].blocks[-1].norm1"]
    out = tmp_path / "cam"
    assert visual_script.main(["--checkpoint", str(runs["swin"] / "ckpt_best.pth"), "--images", str(leaf),
                               "--target-layer", *layers, "--classes", "scab", "rust", "complex", "--output",
                               str(out), "--device", "cpu"]) == 0
    rows, titles = drawn[-1]
    assert [t.split()[0] for t, _ in titles] == ["complex", "rust", "scab"]  # in class order
    assert [[tile.title for tile in row] for row in rows] == [layers] * 3
    assert not np.array_equal(rows[0][0].picture, rows[0][1].picture)
    assert (out / "leaf_target_layers.png").is_file() and (out / "leaf_scab.png").is_file()


def spy_on_sheets(monkeypatch) -> list:
    """The (rows, row titles) of every tile sheet explain/gradcam.py draws from now on."""
    drawn = []
    real = gradcam.tile_sheet

    def spy(rows, title="", row_titles=(), **kwargs):
        drawn.append((rows, list(row_titles)))
        return real(rows, title, row_titles, **kwargs)

    monkeypatch.setattr(gradcam, "tile_sheet", spy)
    return drawn
