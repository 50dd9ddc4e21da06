"""explain/attention.py and visual.py's attention pictures: rollout by hand, uniform attention, Swin's windows
laid back, per-layer GIFs, Grad-CAM on a ViT, the spatial transformer's side-by-side view, clear errors."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from data.images import load_image
from data.labels import CLASSES
from data.transforms import build_transform
from explain import attention, gradcam
from helpers import CNN, ODD_PHOTO_SIZE, VIT, load_run, load_script, make_tree, odd_leaf_photo, tiny_runs

visual_script = load_script("visual.py")

MODELS = {
    "vit": (tuple(VIT), 10),
    "arcpsa_vit": ((*VIT, "MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", "True"), 10),
    "swin": (("MODEL.SWIN.DEPTHS", "[1,2]", "MODEL.SWIN.NUM_HEADS", "[1,2]"), 4),  # a shifted last block
    "cnn": (tuple(CNN), 0),
    "stn": (("MODEL.STN", "True"), 0),
}
IMAGE_SIZE = ODD_PHOTO_SIZE


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    tree = make_tree(tmp_path_factory.mktemp("attention_tree"), {"train": 16})
    return tiny_runs(tmp_path_factory.mktemp("attention_output"), tree, MODELS, [0.5] * len(CLASSES))


@pytest.fixture(scope="session")
def leaf(tmp_path_factory) -> Path:
    return odd_leaf_photo(tmp_path_factory.mktemp("attention_leaves"))


def visual(run: Path, *args: str) -> int:
    return visual_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--device", "cpu", *args])


# ------------------------------------------------------------------------------------------- rollout


def test_rollout_is_the_product_of_the_renormalised_attention_plus_identity():
    """Two blocks of two tokens, one head, worked by hand:
    A1 + I = [[2, 0], [.5, 1.5]] -> rows [[1, 0], [.25, .75]]; A2 + I = [[1, 1], [1, 1]] -> [[.5, .5], [.5, .5]];
    rollout = F2 @ F1 = [[.625, .375], [.625, .375]]."""
    first = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    second = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    expected = torch.tensor([[[0.625, 0.375], [0.625, 0.375]]])
    torch.testing.assert_close(attention.rollout([first, second]), expected)
    # the order matters: the last block multiplies from the left (F1 @ F2 = [[.5, .5], [.5, .5]])
    torch.testing.assert_close(attention.rollout([second, first]), torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))


def test_head_fusions_and_discard_ratio():
    heads = torch.tensor([[[[0.8, 0.2], [0.4, 0.6]], [[0.2, 0.8], [0.6, 0.4]]]])  # (1, 2 heads, 2, 2)
    torch.testing.assert_close(attention.fuse_heads(heads, "mean"), torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    torch.testing.assert_close(attention.fuse_heads(heads, "max"), torch.tensor([[[0.8, 0.8], [0.6, 0.6]]]))
    torch.testing.assert_close(attention.fuse_heads(heads, "min"), torch.tensor([[[0.2, 0.2], [0.4, 0.4]]]))
    # max fusion [[.8, .8], [.6, .6]], the lowest quarter (one entry of four: .6 at [1, 0] or [1, 1]) dropped
    dropped = attention.discard_lowest(attention.fuse_heads(heads, "max"), 0.25)
    assert (dropped == 0).sum() == 1 and dropped[0, 1].min() == 0 and dropped[0, 0].min() == 0.8
    # rollout with the discard: [[.8, .8], [0, .6]] + I -> rows [[1.8, .8] / 2.6, [0, 1]]
    rolled = attention.rollout([heads], "max", 0.25)
    torch.testing.assert_close(rolled[0, 1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(rolled[0, 0], torch.tensor([1.8, 0.8]) / 2.6)
    with pytest.raises(ValueError, match="head fusion must be one of mean, max, min, got 'median'"):
        attention.fuse_heads(heads, "median")
    with pytest.raises(ValueError, match=r"discard ratio must be in \[0, 1\), got 1.0"):
        attention.discard_lowest(heads[:, 0], 1.0)


def test_rollout_map_takes_the_class_row_over_the_patches():
    joint = torch.arange(25.0).view(1, 5, 5)  # one prefix token, a 2 x 2 grid
    torch.testing.assert_close(attention.rollout_map(joint, 1, (2, 2)), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    without_class = attention.rollout_map(joint, 1, (2, 2), class_token=False)  # mean of the patch rows 1-4
    torch.testing.assert_close(without_class, joint[:, 1:, 1:].mean(dim=1).view(1, 2, 2))


def test_uniform_attention_gives_a_flat_map_and_fused_attention_comes_back(runs):
    """Zero query and key weights: every block attends uniformly, so no patch is favoured."""
    model = load_run(runs["vit"]).model
    for block in model.backbone.blocks:
        block.attn.qkv.weight.data[: 2 * block.attn.qkv.out_features // 3] = 0
        block.attn.qkv.bias.data[: 2 * block.attn.qkv.out_features // 3] = 0
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fused = [block.attn.fused_attn for block in model.backbone.blocks]
    with attention.captured_attention([block.attn for block in model.backbone.blocks]) as captured, torch.no_grad():
        logits = model(images)
    assert len(captured) == len(model.backbone.blocks) and captured[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(captured[-1], torch.full_like(captured[-1], 1 / 17))
    assert [block.attn.fused_attn for block in model.backbone.blocks] == fused
    torch.testing.assert_close(model(images), logits, atol=1e-5, rtol=0)  # the unfused path computes the same
    token_map = attention.attention_map(model, images)
    assert token_map.shape == (2, 4, 4)
    assert float(token_map.max() - token_map.min()) < 1e-6 * float(token_map.max())


def test_trained_vit_rollout_varies_and_fusions_differ(runs):
    model = load_run(runs["vit"]).model
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = {fusion: attention.attention_map(model, images, fusion) for fusion in attention.HEAD_FUSIONS}
    assert all(m.std() > 0 for m in maps.values())
    assert not torch.allclose(maps["max"] / maps["max"].max(), maps["min"] / maps["min"].max())


# ------------------------------------------------------------------------------------------- Swin


def test_window_attention_is_laid_back_where_the_block_took_it():
    """Four 2 x 2 windows of a 4 x 4 grid; in window w every query attends to key w only, so the token received
    1 at the w-th position of the w-th window (row-major windows) and 0 elsewhere; a shift rolls it."""
    attention_probs = torch.zeros(4, 1, 4, 4)
    for w in range(4):
        attention_probs[w, 0, :, w] = 1.0
    expected = torch.zeros(4, 4)
    for w in range(4):
        row, col = divmod(w, 2)
        expected[2 * row + w // 2, 2 * col + w % 2] = 1.0
    plain = SimpleNamespace(window_size=(2, 2), shift_size=(0, 0))
    torch.testing.assert_close(attention.received_in_windows(attention_probs, plain, 4, 4)[0], expected)
    shifted = SimpleNamespace(window_size=(2, 2), shift_size=(1, 1))
    torch.testing.assert_close(attention.received_in_windows(attention_probs, shifted, 4, 4)[0],
                               torch.roll(expected, shifts=(1, 1), dims=(0, 1)))


def test_swin_map_is_on_the_last_stage_grid_and_each_window_receives_a_total_of_one(runs):
    model = load_run(runs["swin"]).model
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    blocks = model.backbone.layers[-1].blocks
    assert not any(blocks[0].shift_size) and any(blocks[1].shift_size)
    token_map = attention.attention_map(model, images)[0]
    assert token_map.shape == (8, 8) and token_map.std() > 0
    # rows of attention sum to 1, so the attention a window's tokens receive, averaged over its queries, sums to 1:
    # the grid holds one unit per window in each block (the shifted block's windows straddle the plain ones)
    windows = (8 // blocks[0].window_size[0]) * (8 // blocks[0].window_size[1])
    torch.testing.assert_close(token_map.sum(), torch.tensor(float(windows)))


# ------------------------------------------------------------------------------------------- visual.py


def test_rollout_cli_writes_an_overlay_of_the_image_size(runs, leaf, tmp_path):
    for kind in ("vit", "swin"):
        out = tmp_path / kind
        assert visual(runs[kind], "--images", str(leaf), "--method", "rollout", "--head-fusion", "max",
                      "--discard-ratio", "0.5", "--output", str(out)) == 0
        assert sorted(p.name for p in out.glob("*.png")) == ["leaf_rollout.png"]
        picture = np.asarray(Image.open(out / "leaf_rollout.png"))
        assert picture.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3) and picture.std() > 0
        assert f"rollout ({kind}, heads max, discard ratio 0.5)" in (out / "log.txt").read_text()


def test_rollout_on_a_cnn_is_a_one_line_error_naming_the_file(runs, leaf):
    with pytest.raises(ValueError, match=r"cnn/ckpt_best.pth: --method rollout: attention maps need a timm ViT, "
                                         r"DeiT, EVA or Swin backbone, not ResNet"):
        visual(runs["cnn"], "--images", str(leaf), "--method", "rollout")


@pytest.mark.parametrize("kind", ["swin", "vit", "cnn"])
def test_layers_gif_has_one_frame_per_stage_or_block(runs, leaf, tmp_path, kind):
    out = tmp_path / kind
    assert visual(runs[kind], "--images", str(leaf), "--classes", "rust", "--layers", "--output", str(out)) == 0
    backbone = load_run(runs[kind]).model.backbone
    depth = len(backbone.blocks) if kind == "vit" else len(backbone.feature_info)  # blocks, or stages
    assert kind != "swin" or depth == len(backbone.layers)
    with Image.open(out / "leaf_layers.gif") as gif:
        assert gif.n_frames == depth
    panels = sorted(out.glob("leaf_layer[0-9]*.png"))
    assert len(panels) == depth and all(Image.open(p).size == IMAGE_SIZE for p in panels)
    assert len({Image.open(p).tobytes() for p in panels}) == depth  # every depth draws its own map
    assert (out / "leaf_rust.png").is_file()  # the Grad-CAM maps are still written
    attention_blocks = sorted(out.glob("leaf_attention[0-9]*.png"))
    if kind == "cnn":
        assert not attention_blocks and not (out / "leaf_attention.gif").exists()  # a CNN has no attention
        return
    blocks = len(backbone.blocks) if kind == "vit" else sum(len(stage.blocks) for stage in backbone.layers)
    assert len(attention_blocks) == blocks and all(Image.open(p).size == IMAGE_SIZE for p in attention_blocks)
    with Image.open(out / "leaf_attention.gif") as gif:
        assert gif.n_frames == blocks


def test_block_attention_is_each_blocks_own_class_token_row(runs, leaf):
    """A ViT block's map is its own attention (heads fused), the class token's row over the patches, laid on
    the patch grid: no product over blocks, as rollout takes."""
    loaded = load_run(runs["vit"])
    model, images = loaded.model, loaded.transform(load_image(leaf))[None]
    names, maps = attention.block_attention_maps(model, images, "max")
    backbone = model.backbone
    assert names == [f"block {i + 1}/{len(backbone.blocks)}" for i in range(len(backbone.blocks))]
    with attention.captured_attention([backbone.blocks[-1].attn]) as captured:
        model(images)
    fused = attention.fuse_heads(captured[0], "max")
    expected = fused[:, 0, backbone.num_prefix_tokens:].reshape(1, *backbone.patch_embed.grid_size)
    torch.testing.assert_close(maps[-1], expected)
    assert all(m.shape == (1, *backbone.patch_embed.grid_size) for m in maps)


@pytest.mark.parametrize("kind", ["vit", "arcpsa_vit"])
def test_grad_cam_on_a_vit_gives_maps_of_the_image_size(runs, leaf, kind):
    loaded = load_run(runs[kind])
    model = loaded.model
    assert gradcam.default_target_layer(model) == "backbone.blocks[-1].norm1"
    layer = gradcam.find_module(model, gradcam.default_target_layer(model))
    assert gradcam.reshape_for(model, layer).num_prefix_tokens == 1
    assert gradcam.reshape_for(model, model.backbone.patch_embed.proj) is None
    cam = gradcam.build_cam(model)
    maps, probs = gradcam.class_maps(cam, load_image(leaf), build_transform(False, loaded.config), range(6))
    assert maps.shape == (len(CLASSES), IMAGE_SIZE[1], IMAGE_SIZE[0]) and np.isfinite(maps).all()
    assert sum(m.std() > 0.01 for m in maps) >= 2
    assert probs.shape == (len(CLASSES),)


def test_stn_model_writes_the_photo_beside_its_warped_view(runs, leaf, tmp_path):
    """At initialisation the warp is the identity: both halves show the same 64 px input."""
    out = tmp_path / "stn"
    assert visual(runs["stn"], "--images", str(leaf), "--classes", "scab", "--output", str(out)) == 0
    pair = np.asarray(Image.open(out / "leaf_stn.png"), dtype=int)
    assert pair.shape == (64, 128, 3)
    before, after = pair[:, :64], pair[:, 64:]
    assert before.std() > 10 and np.abs(before - after).max() <= 2
    loaded = load_run(runs["stn"])
    loaded.model.stn.fc_loc[-1].bias.data = torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5, 0.0])  # zoom into the centre
    preprocessing = loaded.info.preprocessing
    [path] = gradcam.explain_warp(loaded.model, load_image(leaf), "zoom", loaded.transform, preprocessing.mean,
                                  preprocessing.std, tmp_path)
    zoomed = np.asarray(Image.open(path), dtype=int)
    assert np.abs(zoomed[:, :64] - zoomed[:, 64:]).max() > 20
