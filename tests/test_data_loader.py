"""Schema encoding, the cache round trip, the Dataset and its augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.augment import AUGMENTATIONS
from data.cache import FaceCache, write_cache
from data.dataset import FaceDataset, resolve_data, to_model_range, to_uint8
from data.errors import DataError
from data.schema import COND_DIM, as_cond, cond_to_levels, levels_to_cond


@pytest.fixture
def cache_dir(tmp_path):
    rng = np.random.default_rng(0)
    n = 48
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    levels = rng.integers(0, 6, (n, 5))
    split = np.array([0] * 32 + [1] * 8 + [2] * 8, dtype=np.int8)
    write_cache(
        tmp_path / "c",
        images,
        levels,
        split,
        [f"{i}.png" for i in range(n)],
        [f"caption {i}" for i in range(n)],
        {"kind": "test"},
    )
    return tmp_path / "c", images, levels


def test_onehot_round_trip_numpy_and_torch():
    levels = np.array([[0, 1, 2, 3, 4], [5, 5, 5, 5, 5], [0, 0, 0, 0, 0]])
    cond = levels_to_cond(levels)
    assert cond.shape == (3, COND_DIM) and cond.dtype == np.float32
    assert cond.sum(axis=1).tolist() == [5, 5, 5]
    assert cond[0, 6 + 1] == 1 and cond[0, 24 + 4] == 1
    np.testing.assert_array_equal(cond_to_levels(cond), levels)
    tcond = levels_to_cond(torch.from_numpy(levels))
    assert torch.equal(tcond, torch.from_numpy(cond))
    assert torch.equal(cond_to_levels(tcond), torch.from_numpy(levels))
    assert torch.equal(as_cond(levels), torch.from_numpy(cond)) and torch.equal(as_cond(cond), torch.from_numpy(cond))


@pytest.mark.parametrize("bad", [np.array([[0, 1, 2, 3, 6]]), np.array([[-1, 0, 0, 0, 0]]), np.zeros((2, 4), int)])
def test_out_of_range_levels_are_rejected(bad):
    with pytest.raises(ValueError, match="attribute levels"):
        levels_to_cond(bad)


def test_unconditional_vector_has_no_levels():
    with pytest.raises(ValueError, match="unconditional"):
        cond_to_levels(np.zeros((1, COND_DIM), np.float32))


def test_cache_round_trip(cache_dir):
    root, images, levels = cache_dir
    cache = FaceCache.open(root)
    np.testing.assert_array_equal(cache.images, images)
    np.testing.assert_array_equal(cache.levels, levels)
    assert cache.manifest["counts"] == {"train": 32, "val": 8, "test": 8}
    assert cache.indices("val").tolist() == list(range(32, 40))
    assert cache.captions[33] == "caption 33" and cache.size == 16
    with pytest.raises(DataError, match="unknown split"):
        cache.indices("dev")


def test_incomplete_cache_is_refused(cache_dir):
    root = cache_dir[0]
    (root / "levels.npy").unlink()
    with pytest.raises(DataError, match="not a complete image cache"):
        FaceCache.open(root)


def test_dataset_items_without_augmentation_are_exact(cache_dir):
    root, images, levels = cache_dir
    ds = FaceDataset(root, "val")
    item = ds[3]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    np.testing.assert_array_equal(to_uint8(item["image"]), images[35])
    assert item["levels"].tolist() == levels[35].tolist()
    assert torch.equal(item["cond"], torch.from_numpy(levels_to_cond(levels[35])))
    assert item["caption"] == "caption 35"
    assert len(FaceDataset(root, "train", limit=5)) == 5


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_augmentation_keeps_shape_and_range(cache_dir, augment):
    ds = FaceDataset(cache_dir[0], "train", augment=augment)
    torch.manual_seed(0)
    items = [ds[i]["image"] for i in range(32)]
    for img in items:
        assert img.shape == (3, 16, 16)
        assert img.min() >= -1.0 and img.max() <= 1.0
    changed = sum(not torch.equal(img, to_model_range(cache_dir[1][i])) for i, img in enumerate(items))
    assert changed == 0 if augment == "none" else changed > 16  # p = 0.8 per transform


def test_no_color_augmentation_keeps_colour_statistics(tmp_path):
    flat = np.full((4, 16, 16, 3), (200, 40, 90), np.uint8)
    write_cache(tmp_path / "flat", flat, np.zeros((4, 5), int), np.zeros(4, np.int8), list("abcd"), list("abcd"), {})
    torch.manual_seed(1)
    geo = FaceDataset(tmp_path / "flat", augment="study-no-color")
    for i in range(4):
        np.testing.assert_array_equal(to_uint8(geo[i]["image"]), flat[i])  # geometry of a flat image changes nothing
    col = FaceDataset(tmp_path / "flat", augment="study")
    assert any(not np.array_equal(to_uint8(col[i % 4]["image"]), flat[0]) for i in range(12))


def test_dataloader_workers_differ_and_batch(cache_dir):
    ds = FaceDataset(cache_dir[0], "train", augment="study")
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 4
    b = batches[0]
    assert b["image"].shape == (8, 3, 16, 16) and b["cond"].shape == (8, 30) and len(b["caption"]) == 8


def test_dataloader_workers_load_the_same_augmented_batches_as_the_main_process(cache_dir):
    """A GPU trial loads with worker processes (orchestration.resources.loader_workers): the batches, augmentation
    included, are the ones a CPU trial's in-process loading draws."""
    def epoch_batches(workers):
        torch.manual_seed(5)
        ds = FaceDataset(cache_dir[0], "train", augment="study")
        ds.set_epoch(2)
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(7))
        return torch.cat([b["image"] for b in loader])

    alone, pooled = epoch_batches(0), epoch_batches(3)
    assert pooled.shape == (32, 3, 16, 16) and torch.equal(alone, pooled)


def test_unknown_augmentation_and_data_spec(cache_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation"):
        FaceDataset(cache_dir[0], augment="heavy")
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(tmp_path / "missing")
    with pytest.raises(DataError, match="--size 32"):
        resolve_data(cache_dir[0], size=32)


def test_set_epoch_makes_augmentation_repeatable(cache_dir):
    def epoch_images(ds, epoch):
        ds.set_epoch(epoch)
        return torch.stack([ds[i]["image"] for i in range(8)])

    torch.manual_seed(3)
    first = FaceDataset(cache_dir[0], "train", augment="study")
    e0, e1 = epoch_images(first, 0), epoch_images(first, 1)
    assert not torch.equal(e0, e1)
    torch.manual_seed(3)
    resumed = FaceDataset(cache_dir[0], "train", augment="study")  # a fresh process resuming at epoch 1
    assert torch.equal(epoch_images(resumed, 1), e1)
