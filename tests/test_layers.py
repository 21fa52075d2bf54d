"""Layer I/O against real napari layers: planes, prompt coordinates, writing Labels.

Coordinates are where plugins go wrong, so every case here uses scaled,
translated, rotated or nD layers and checks against napari's own transforms
and slicing.
"""

import dask.array as da
import numpy as np
import pytest
from napari.layers import Image, Labels, Points, Shapes

from napari_segsuite.core.errors import InputError
from napari_segsuite.layers import (
    METADATA_KEY,
    current_plane,
    points_on_plane,
    shapes_on_plane,
    write_plane,
)

pytestmark = pytest.mark.widget


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=False)


def _stack(shape=(5, 20, 30)):
    return np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)


def test_plane_of_scaled_translated_stack_matches_napari_slice(viewer):
    data = _stack()
    layer = viewer.add_image(data, scale=(2.5, 0.5, 0.5), translate=(10.0, -3.0, 4.0))
    for world_z in (10.0, 12.4, 13.9, 20.0):
        viewer.dims.set_point(0, world_z)
        plane, sel = current_plane(viewer, layer)
        z = int(np.round((world_z - 10.0) / 2.5))
        np.testing.assert_array_equal(plane, data[z])
        # napari shows the same plane
        np.testing.assert_array_equal(plane, layer._slice.image.raw)
        assert sel.labels_index == (z, slice(None), slice(None))
        assert sel.axes == (1, 2) and sel.shape == (20, 30)


def test_plane_follows_the_displayed_axes(viewer):
    data = _stack()
    layer = viewer.add_image(data)
    viewer.dims.order = (1, 0, 2)  # show z and x; slide through y
    viewer.dims.set_point(1, 7)
    plane, sel = current_plane(viewer, layer)
    np.testing.assert_array_equal(plane, data[:, 7, :])
    assert sel.axes == (0, 2) and sel.labels_index == (slice(None), 7, slice(None))


def test_4d_layer_and_lower_dim_layer_in_same_world(viewer):
    data4 = np.random.default_rng(0).random((3, 4, 10, 12))
    layer4 = viewer.add_image(data4, name="t-z-y-x")
    layer2 = viewer.add_image(np.ones((10, 12)), name="2d")
    viewer.dims.set_point(0, 2)
    viewer.dims.set_point(1, 1)
    plane, _sel = current_plane(viewer, layer4)
    np.testing.assert_array_equal(plane, data4[2, 1])
    plane2, sel2 = current_plane(viewer, layer2)
    assert plane2.shape == (10, 12) and sel2.labels_index == (slice(None), slice(None))


def test_rgb_plane_and_multiscale_and_dask(viewer):
    rgb = np.random.default_rng(1).integers(0, 255, (16, 18, 3), dtype=np.uint8)
    layer = viewer.add_image(rgb, rgb=True)
    plane, sel = current_plane(viewer, layer)
    assert plane.shape == (16, 18, 3) and sel.rgb and sel.layer_shape == (16, 18)
    pyramid = [np.arange(64 * 64).reshape(64, 64), np.arange(32 * 32).reshape(32, 32)]
    ms = viewer.add_image(pyramid, multiscale=True)
    plane, _ = current_plane(viewer, ms)
    np.testing.assert_array_equal(plane, pyramid[0])
    lazy = da.from_array(_stack(), chunks=(1, 20, 30))
    dl = viewer.add_image(lazy)
    viewer.dims.set_point(0, 3)
    plane, _ = current_plane(viewer, dl)
    assert isinstance(plane, np.ndarray)
    np.testing.assert_array_equal(plane, _stack()[3])


def test_channel_axis_travels_with_the_plane(viewer):
    data = np.random.default_rng(2).random((4, 3, 10, 12))  # z, c, y, x
    layer = Image(data)
    viewer.add_layer(layer)
    viewer.dims.set_point(0, 2)
    plane, sel = current_plane(viewer, layer, channel_axis=1)
    assert plane.shape == (10, 12, 3)
    np.testing.assert_array_equal(plane[..., 1], data[2, 1])
    assert sel.layer_shape == (4, 10, 12) and sel.labels_index == (2, slice(None), slice(None))


def test_position_outside_the_image_is_a_clear_error(viewer):
    layer = viewer.add_image(_stack((3, 8, 8)), translate=(100, 0, 0))
    other = viewer.add_image(_stack((3, 8, 8)))
    viewer.dims.set_point(0, 1)  # inside `other`, outside `layer`
    current_plane(viewer, other)
    with pytest.raises(InputError, match="outside layer"):
        current_plane(viewer, layer)


def test_points_in_world_units_map_to_image_pixels(viewer):
    image = viewer.add_image(_stack(), scale=(3.0, 2.0, 0.5), translate=(0.0, 10.0, -5.0))
    # Points layer with its own scale: data (z, y, x) * (1, 1, 1) world.
    pts = Points(np.array([[6.0, 10.0 + 2.0 * 4, -5.0 + 0.5 * 7], [6.0, 14.0, -1.0], [3.0, 12.0, 0.0]]))
    viewer.add_layer(pts)
    viewer.dims.set_point(0, 6.0)
    _, sel = current_plane(viewer, image)
    coords, which = points_on_plane(viewer, pts, image, sel)
    assert list(which) == [0, 1]  # the third point is on another plane
    np.testing.assert_allclose(coords[0], [4.0, 7.0])
    np.testing.assert_allclose(coords[1], [2.0, 8.0])


def test_2d_points_over_a_3d_stack_use_the_current_plane(viewer):
    image = viewer.add_image(_stack(), scale=(1.0, 2.0, 2.0))
    pts = viewer.add_points(np.array([[4.0, 6.0]]))
    viewer.dims.set_point(0, 3)
    _, sel = current_plane(viewer, image)
    coords, _which = points_on_plane(viewer, pts, image, sel)
    np.testing.assert_allclose(coords, [[2.0, 3.0]])


def test_points_on_a_rotated_image(viewer):
    image = viewer.add_image(np.zeros((20, 30)), rotate=90)
    world = image.data_to_world([5.0, 8.0])
    pts = viewer.add_points(np.array([world]))
    _, sel = current_plane(viewer, image)
    coords, _ = points_on_plane(viewer, pts, image, sel)
    np.testing.assert_allclose(coords, [[5.0, 8.0]], atol=1e-9)


def test_shapes_become_boxes_and_masks_in_pixels(viewer):
    image = viewer.add_image(_stack(), scale=(1.0, 2.0, 2.0), translate=(0, 4.0, 0))
    shapes = Shapes(ndim=3)
    viewer.add_layer(shapes)
    def corners(z, r0, c0, r1, c1):
        return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], dtype=float)

    shapes.add_rectangles(corners(2, 4 + 2 * 2, 2 * 3, 4 + 2 * 8, 2 * 10))
    shapes.add_ellipses(corners(2, 4 + 2 * 5, 2 * 15, 4 + 2 * 15, 2 * 25))
    shapes.add_rectangles(corners(3, 10, 10, 20, 20))  # other plane
    viewer.dims.set_point(0, 2)
    _, sel = current_plane(viewer, image)
    prompts = shapes_on_plane(viewer, shapes, image, sel)
    assert [p.kind for p in prompts] == ["rectangle", "ellipse"]
    np.testing.assert_allclose(prompts[0].box, [2, 3, 8, 10])
    mask = prompts[1].mask(sel.shape)
    assert mask[10, 20] and not mask[5, 15] and not mask[0, 0]


def test_write_plane_aligned_labels_other_planes_untouched_and_undo(viewer):
    image = viewer.add_image(_stack(), name="cells", scale=(2.0, 0.5, 0.5), translate=(1, 2, 3))
    viewer.dims.set_point(0, 1 + 2.0 * 3)
    _, sel = current_plane(viewer, image)
    result = np.zeros(sel.shape, np.int32)
    result[2:5, 3:9] = 1
    result[10:12, 10:12] = 2
    layer = write_plane(
        viewer, image, sel, result, task="semantic", provenance={"model": "tiny"},
        extra_features={1: {"class_name": "cell"}, 2: {"class_name": "nucleus"}},
    )
    assert isinstance(layer, Labels) and layer.name == "cells [semantic]"
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.data.shape == (5, 20, 30)
    np.testing.assert_array_equal(layer.data[3], result)
    assert not layer.data[[0, 1, 2, 4]].any()
    feats = layer.features
    assert list(feats["index"]) == [1, 2] and list(feats["class_name"]) == ["cell", "nucleus"]
    assert list(feats["area"]) == [18, 4]
    meta = layer.metadata[METADATA_KEY]
    assert meta["task"] == "semantic" and meta["planes"]["0:3"]["model"] == "tiny"
    # a second plane goes into the same layer
    viewer.dims.set_point(0, 1 + 2.0 * 1)
    _, sel1 = current_plane(viewer, image)
    write_plane(viewer, image, sel1, result * 0 + (result > 0), task="semantic")
    assert len(viewer.layers) == 2
    np.testing.assert_array_equal(layer.data[3], result)
    assert layer.data[1].sum() == 22
    assert list(layer.features["class_name"]) == ["cell", "nucleus"]  # kept
    assert list(layer.features["area"]) == [40, 4]
    layer.undo()
    assert not layer.data[1].any()
    np.testing.assert_array_equal(layer.data[3], result)


def test_write_plane_merge_mode_keeps_existing_labels(viewer):
    image = viewer.add_image(np.zeros((10, 10)), name="img")
    _, sel = current_plane(viewer, image)
    first = np.zeros((10, 10), np.int32)
    first[:5] = 1
    layer = write_plane(viewer, image, sel, first, task="prompt")
    second = np.zeros((10, 10), np.int32)
    second[3:8] = 2
    write_plane(viewer, image, sel, second, task="prompt", mode="merge")
    assert (layer.data[:5] == 1).all() and (layer.data[5:8] == 2).all() and not layer.data[8:].any()


def test_write_into_a_labels_layer_of_another_shape_is_refused(viewer):
    image = viewer.add_image(np.zeros((10, 10)), name="img")
    wrong = viewer.add_labels(np.full((8, 8), 3, dtype=np.int32), name="img [semantic]")
    _, sel = current_plane(viewer, image)
    with pytest.raises(InputError, match="has shape"):
        write_plane(viewer, image, sel, np.ones((10, 10), np.int32), task="semantic")
    assert (wrong.data == 3).all()
    with pytest.raises(InputError, match="does not fit"):
        write_plane(viewer, image, sel, np.ones((9, 10), np.int32), task="semantic", name="other")
    assert "other" not in viewer.layers
