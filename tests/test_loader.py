"""Transforms, samplers, oversampling and mixup on a tiny one-hot tree drawn by the test."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from config import get_default_config
from data.labels import CLASSES, labels_to_vector
from data.loader import (
    EpochSampler,
    MultiHotMixup,
    SeededSamples,
    ShardSampler,
    balance_weights,
    build_loader,
    oversample_indices,
    oversampling_summary,
)
from data.transforms import build_transform
from helpers import make_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), {"train": 24, "val": 10})


def tiny_config(data_path: Path, *opts):
    config = get_default_config()
    config.merge_from_list([
        "DATA.DATA_PATH", str(data_path), "DATA.IMG_SIZE", 64, "DATA.BATCH_SIZE", 4, "DATA.NUM_WORKERS", 0,
        *opts,
    ])
    return config


def test_transforms_give_normalised_tensors_of_img_size(tree):
    config = tiny_config(tree)
    image = Image.open(next((tree / "train").glob("*/*.jpg"))).convert("RGB")
    train, evaluation = build_transform(True, config), build_transform(False, config)
    assert train(image).shape == (3, 64, 64)
    assert evaluation(image).shape == (3, 64, 64)
    assert torch.equal(evaluation(image), evaluation(image))
    torch.manual_seed(0)
    augmented = train(image)
    torch.manual_seed(1)
    assert not torch.equal(augmented, train(image))  # training draws its augmentation
    # One colour, any size: every pixel (value / 255 - mean) / std, with the Swin backbone's ImageNet statistics.
    colour, mean, std = (200, 100, 50), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    solid = evaluation(Image.new("RGB", (90, 70), colour))
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, mean, std)])
    torch.testing.assert_close(solid, expected[:, None, None].expand(3, 64, 64), atol=1e-5, rtol=0)
    config.merge_from_list(["TEST.CROP", True, "AUG.AUTO_AUGMENT", "none", "AUG.COLOR_JITTER", 0.0])
    assert build_transform(False, config)(image).shape == (3, 64, 64)
    assert build_transform(True, config)(image).shape == (3, 64, 64)


def test_randaugment_survives_its_strongest_magnitude(tree):
    """Every op of the default RandAugment at magnitude 10 (posterize then keeps 0 bits) runs."""
    config = tiny_config(tree)
    randaugment = next(step for step in build_transform(True, config).transforms if hasattr(step, "ops"))
    image = Image.open(next((tree / "train").glob("*/*.jpg"))).convert("RGB")
    assert any("Posterize" in op.name for op in randaugment.ops)
    for op in randaugment.ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
        assert op(image).size == image.size, op.name


def test_oversample_indices_repeat_by_largest_factor():
    targets = np.stack([labels_to_vector(s) for s in ("healthy", "complex", "rust complex", "rust")])
    indices = oversample_indices(targets, {"complex": 3, "rust": 2})
    assert Counter(indices) == {0: 1, 1: 3, 2: 3, 3: 2}
    # rust rides along on the rust + complex leaf: 2 -> 1*3 + 1*2; healthy is left as it was
    assert oversampling_summary(targets, indices) == "complex 2 -> 6, rust 2 -> 5"
    assert oversampling_summary(targets, oversample_indices(targets, {})) == ""


def test_oversampling_touches_training_only(tree):
    config = tiny_config(tree, "DATA.OVERSAMPLE.complex", 3)
    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(config)
    assert mixup_fn is None
    complex_train = dataset_train.targets[:, CLASSES.index("complex")] > 0
    counts = Counter(index for index, _ in loader_train.sampler.epoch_order())
    assert all(counts[i] == (3 if complex_train[i] else 1) for i in range(len(dataset_train)))
    assert len(loader_train.sampler.indices) == len(dataset_train) + 2 * complex_train.sum()
    # Validation: every image exactly once, targets as in the tree.
    assert len(dataset_val) == 10
    assert list(loader_val.sampler) == list(range(10))
    seen = torch.cat([targets for _, targets in loader_val])
    assert torch.equal(seen, torch.from_numpy(dataset_val.targets))


def test_epoch_order_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(list(range(20)), seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert list(EpochSampler(list(range(20)), seed=3).__iter__()) != first  # epoch 0 differs
    again = EpochSampler(list(range(20)), seed=3)
    again.set_epoch(1)
    assert list(again) == first and sorted(i for i, _ in first) == list(range(20))
    again.set_epoch(1, skip=8)
    assert list(again) == first[8:] and len(again) == 12


def test_distributed_samplers_split_without_losing_images():
    ranks = [EpochSampler(list(range(11)), seed=0, rank=r, world_size=2) for r in range(2)]
    orders = [[i for i, _ in s] for s in ranks]
    assert len(orders[0]) == len(orders[1]) == 6  # padded to equal length, as DistributedSampler
    assert set(orders[0]) | set(orders[1]) == set(range(11))
    shards = [list(ShardSampler(11, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(11))  # validation: no duplicates at all


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone(tree):
    config = tiny_config(tree)
    dataset = SeededSamples(build_loader(config)[0])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = dataset[(5, 123)][0], dataset[(5, 123)][0], dataset[(5, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)


def test_training_batches_do_not_depend_on_worker_count(tree):
    def batches(workers: int) -> list[torch.Tensor]:
        loader = build_loader(tiny_config(tree, "DATA.NUM_WORKERS", workers))[2]
        loader.sampler.set_epoch(2)
        return [images for images, _ in loader]

    assert all(torch.equal(x, y) for x, y in zip(batches(0), batches(2), strict=True))


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_mixes_multi_hot_targets(mode):
    mixup = MultiHotMixup(mixup_alpha=0.8, cutmix_alpha=0.0, mode=mode, num_classes=len(CLASSES))
    targets = torch.stack([torch.from_numpy(labels_to_vector(s)) for s in ("scab frog_eye_leaf_spot", "rust")])
    images = torch.rand(2, 3, 8, 8)
    mixed_images, mixed = mixup(images.clone(), targets)
    lam = mixed[0, CLASSES.index("scab")].item()  # scab is only in image 0, rust only in image 1
    assert 0.0 <= lam <= 1.0
    assert mixed[0, CLASSES.index("rust")].item() == pytest.approx(1 - lam)
    assert torch.allclose(mixed[0], lam * targets[0] + (1 - lam) * targets[1])
    assert mixed[:, CLASSES.index("healthy")].eq(0).all()  # in neither image
    if mode == "batch":
        assert torch.allclose(mixed_images, lam * images + (1 - lam) * images.flip(0))


def test_balance_weights_on_known_counts():
    targets = np.zeros((5, 6))
    targets[:4, 5] = 1  # four scab
    targets[4, [0, 5]] = 1  # one complex + scab: scab counted five times
    np.testing.assert_allclose(balance_weights(targets, 1.0), [0.2, 0.2, 0.2, 0.2, 1.0])
    np.testing.assert_allclose(balance_weights(targets, 0.5), [5 ** -0.5] * 4 + [1.0])


def test_balanced_sampler_draws_rare_images_more_then_shuffles_after_its_last_epoch():
    targets = np.zeros((100, 6))
    targets[:90, 5] = 1  # 90 scab
    targets[90:, 0] = 1  # 10 complex
    weights = balance_weights(targets, 1.0)
    sampler = EpochSampler(list(range(100)), seed=0, weights=weights, weighted_until=2)
    sampler.set_epoch(1)
    drawn = [index for index, _ in sampler]
    assert len(drawn) == 100 and sum(i >= 90 for i in drawn) > 35  # about half, against 10 when shuffled
    assert drawn == [index for index, _ in sampler]  # the same epoch again: the same draw (resumable)
    sampler.set_epoch(2)
    assert sorted(index for index, _ in sampler) == list(range(100))  # from epoch 2: a plain shuffle


def test_sampler_power_balances_the_training_loader_only(tree):
    _, _, loader_train, _, _ = build_loader(tiny_config(tree, "DATA.SAMPLER_POWER", 1.0,
                                                        "DATA.OVERSAMPLE.complex", 2, "DATA.SAMPLER_UNTIL_EPOCH", 3))
    sampler = loader_train.sampler
    expected = balance_weights(loader_train.dataset.dataset.targets, 1.0)[sampler.indices]
    np.testing.assert_allclose(sampler.weights.numpy(), expected)
    assert sampler.weighted_until == 3
    assert build_loader(tiny_config(tree))[2].sampler.weights is None
