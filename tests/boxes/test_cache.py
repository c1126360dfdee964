"""Per-device caches of priors and constants: bounded, built outside inference mode, not copied with the
criterion, and equal to the uncached constructions (references: ``torch.repeat_interleave`` of the host values,
``torch.cat`` of the generators' per-level priors, ``valid_flags`` of a padded-shape tensor)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lightning_losses import FCOSCriterion
from lightning_losses.boxes import (
    AnchorGenerator,
    DeviceCache,
    PointGenerator,
    device_constant,
    image_valid_flags,
    level_indices,
    point_priors,
    prior_strides,
    valid_flags,
)
from tests.references.scenes import random_maps, scene


def test_cache_builds_once_and_drops_the_least_recently_used_entry():
    cache, built = DeviceCache(size=2), []

    def build(name):
        built.append(name)
        return torch.zeros(1)

    a = cache.get("a", lambda: build("a"))
    cache.get("b", lambda: build("b"))
    assert cache.get("a", lambda: build("a")) is a  # "a" is now the most recent
    cache.get("c", lambda: build("c"))  # drops "b"
    cache.get("a", lambda: build("a"))
    cache.get("b", lambda: build("b"))
    assert built == ["a", "b", "c", "b"]
    assert len(cache) == 2
    with pytest.raises(ValueError, match="size"):
        DeviceCache(size=0)


def test_copies_and_pickles_start_empty():
    cache = DeviceCache(size=3)
    cache.get("a", lambda: torch.ones(2))
    for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert len(clone) == 0
        assert clone.size == 3
    assert len(cache) == 1


def test_priors_first_made_under_inference_mode_serve_a_training_graph():
    """Lightning validates under inference_mode: priors cached there must not be inference tensors, which
    autograd refuses to save for backward."""
    classes = 3
    generator, targets, sizes = scene("seed0", classes)
    maps = [
        random_maps(generator, 2, classes, sizes),
        random_maps(generator, 2, 4, sizes, positive=True),
        random_maps(generator, 2, 1, sizes),
    ]
    criterion = FCOSCriterion(classes, norm_on_bbox=True)
    with torch.inference_mode():
        criterion(*maps, targets)
    points = criterion.point_generator.priors(sizes)
    assert not points.is_inference()
    sum(criterion(*maps, targets).values()).backward()
    assert all(m.grad is not None for level in maps for m in level)


def test_cached_priors_equal_the_per_level_generators():
    sizes = [(5, 7), (3, 4), (1, 1)]
    anchors = AnchorGenerator([8, 16, 32], ratios=(0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3)
    points = PointGenerator([8, 16, 32], offset=0.5)
    for generator in (anchors, points):
        first = generator.priors(sizes)
        torch.testing.assert_close(first, torch.cat(generator.grid_priors(sizes)), rtol=0, atol=0)
        assert generator.priors(sizes) is first
        assert generator.priors([(2, 2), (1, 1), (1, 1)]).shape[0] != first.shape[0]
    corners = point_priors(sizes, [8, 16, 32], 0.0)
    torch.testing.assert_close(corners, torch.cat(PointGenerator([8, 16, 32], 0.0).grid_priors(sizes)), rtol=0, atol=0)


@pytest.mark.parametrize("counts", [[6, 0, 3], [1], [4, 4]])
def test_level_indices_and_strides_equal_repeat_interleave(counts):
    strides = [8, 16, 32][: len(counts)]
    repeats = torch.tensor(counts)
    torch.testing.assert_close(level_indices(counts), torch.repeat_interleave(torch.arange(len(counts)), repeats))
    want = torch.repeat_interleave(torch.tensor(strides, dtype=torch.float64), repeats)
    torch.testing.assert_close(prior_strides(counts, strides, dtype=torch.float64), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="counts"):
        prior_strides(counts, [*strides, 64])


@pytest.mark.parametrize("image_size", [(37, 50), [(37, 50), (64, 20)], torch.tensor([[37, 50], [64, 20]])])
def test_image_valid_flags_equal_valid_flags_of_the_padded_shapes(image_size):
    sizes, strides = [(8, 8), (4, 4)], [8, 16]
    shapes = torch.as_tensor(image_size).reshape(-1, 2).expand(2, 2)
    want = valid_flags(sizes, strides, 3, shapes)
    got = image_valid_flags(sizes, strides, 3, image_size, 2, "cpu")
    assert got.shape == (2, 3 * (64 + 16))
    assert torch.equal(got, want)
    assert not want.all()  # the sizes cut cells off


def test_device_constant_keeps_shape_dtype_and_is_shared():
    got = device_constant([[-1, 64], [64, 1e8]], "cpu")
    torch.testing.assert_close(got, torch.tensor([[-1.0, 64.0], [64.0, 1e8]]), rtol=0, atol=0)
    assert device_constant([[-1, 64], [64, 1e8]], "cpu") is got
    assert device_constant(640, "cpu", torch.float64).shape == ()
    assert device_constant((1, 2), "cpu", torch.long).dtype == torch.long
    with pytest.raises(ValueError, match="rectangular"):
        device_constant([[1.0, 2.0], [3.0]], "cpu")
