import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import (
    image_signature,
    percentile_normalize,
    prepare_rgb_float,
    prepare_rgb_uint8,
    to_rgb,
)


def test_percentile_normalize_maps_percentiles_to_unit_range(rng):
    img = rng.normal(1000, 100, size=(64, 64)).astype(np.uint16)
    out = percentile_normalize(img, (1, 99))
    assert out.dtype == np.float32
    lo, hi = np.percentile(img, [1, 99])
    assert np.isclose(out[img <= lo].max(), 0.0)
    assert np.isclose(out[img >= hi].min(), 1.0)
    mid = (img > lo) & (img < hi)
    np.testing.assert_allclose(out[mid], (img[mid] - lo) / (hi - lo), rtol=1e-5)


def test_percentile_normalize_handles_nan_inf_and_constant():
    img = np.array([[np.nan, np.inf], [-np.inf, 5.0], [1.0, 3.0]], dtype=np.float32)
    out = percentile_normalize(img, (0, 100))
    assert np.isfinite(out).all()
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0 and out[1, 0] == 0.0
    assert out[1, 1] == 1.0 and out[2, 0] == 0.0 and out[2, 1] == pytest.approx(0.5)
    assert (percentile_normalize(np.full((4, 4), 7.0)) == 0).all()


def test_percentile_normalize_per_channel(rng):
    img = np.stack([rng.uniform(0, 10, (16, 16)), rng.uniform(1000, 5000, (16, 16))], axis=-1)
    out = percentile_normalize(img, (0, 100))
    for c in range(2):
        assert out[..., c].min() == 0.0 and out[..., c].max() == 1.0


@pytest.mark.parametrize(
    ("shape", "expected_first_pixel"),
    [((4, 5), (7, 7, 7)), ((4, 5, 1), (7, 7, 7)), ((4, 5, 2), (7, 8, 0)), ((4, 5, 4), (7, 8, 9))],
)
def test_to_rgb_channel_rules(shape, expected_first_pixel):
    img = np.zeros(shape, dtype=np.uint8)
    values = [7, 8, 9, 10]
    if len(shape) == 2:
        img[:] = 7
    else:
        for c in range(shape[2]):
            img[..., c] = values[c]
    out = to_rgb(img)
    assert out.shape == (4, 5, 3)
    assert tuple(out[0, 0]) == expected_first_pixel


def test_prepare_rgb_uint8_dtypes(rng):
    u8 = rng.integers(0, 255, (8, 9), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_rgb_uint8(u8)[..., 1], u8)  # uint8 passes through
    u16 = rng.integers(0, 65535, (8, 9), dtype=np.uint16)
    out = prepare_rgb_uint8(u16)
    assert out.dtype == np.uint8 and out.shape == (8, 9, 3)
    assert out.min() == 0 and out.max() == 255
    f = prepare_rgb_float(rng.normal(size=(8, 9, 3)))
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4, 5)), np.zeros((0, 5)), np.array([["a"]])])
def test_prepare_rejects_bad_planes(bad):
    with pytest.raises(InputError):
        prepare_rgb_uint8(bad, channels_last=bad.ndim == 3)


def test_image_signature_changes_with_content():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert image_signature(a) == image_signature(b)
    b[0, 0] = 1
    assert image_signature(a) != image_signature(b)
    assert image_signature(a) != image_signature(a.astype(np.uint16))
