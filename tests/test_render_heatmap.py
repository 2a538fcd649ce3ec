"""Heat-map rendering: channel reductions, colormap choice, overlays, grids and notebook display."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import deepscope as ds
from deepscope.render.heatmap import normalize, reduce_channels


def test_channel_reductions():
    attribution = torch.tensor([[[1.0, -2.0]], [[-3.0, 2.0]]])  # [C=2, H=1, W=2]
    assert reduce_channels(attribution, "sum").tolist() == [[-2.0, 0.0]]
    assert reduce_channels(attribution, "abs_sum").tolist() == [[4.0, 4.0]]
    torch.testing.assert_close(reduce_channels(attribution, "l2"), torch.tensor([[10**0.5, 8**0.5]]))
    assert reduce_channels(attribution, "max_abs").tolist() == [[3.0, 2.0]]
    with pytest.raises(ValueError, match="reduce must be one of"):
        reduce_channels(attribution, "mean")


def test_signed_maps_are_centered_and_clipped_at_a_percentile():
    values = torch.tensor([[-1.0, 0.0, 0.5, 100.0]])
    position, magnitude = normalize(values, signed=True, clip=50)  # the median |v| (0.75) is full color
    np.testing.assert_allclose(position, [[0.0, 0.5, 0.5 + 0.5 / 1.5, 1.0]])
    np.testing.assert_allclose(magnitude, [[1.0, 0.0, 0.5 / 0.75, 1.0]])
    position, _ = normalize(torch.tensor([[2.0, 4.0, 6.0]]), signed=False, clip=100)
    np.testing.assert_allclose(position, [[0.0, 0.5, 1.0]])


def colors(figure) -> np.ndarray:
    return np.asarray(figure.image, dtype=float)


def test_negative_evidence_is_blue_and_positive_red_without_an_image():
    attribution = torch.zeros(1, 4, 4)
    attribution[0, 0, 0], attribution[0, 3, 3] = -1.0, 1.0
    picture = colors(ds.render.heatmap(attribution))
    red, blue = picture[3, 3], picture[0, 0]
    assert red[0] > red[2] + 50 and blue[2] > blue[0] + 50  # RdBu_r's dark ends


def test_cams_show_their_positive_part_in_a_sequential_colormap():
    cam = torch.tensor([[[-5.0, 0.0], [1.0, 2.0]]])
    picture = colors(ds.render.heatmap(cam, method="grad_cam"))
    # inferno: the negative and zero positions are both the darkest color, 2 the brightest
    np.testing.assert_array_equal(picture[0, 0], picture[0, 1])
    assert picture[1, 1].sum() > picture[1, 0].sum() > picture[0, 0].sum()


def test_overlay_keeps_the_photo_where_the_map_is_zero():
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0  # pure red photo
    attribution = torch.zeros(3, 4, 4)
    attribution[:, 0, 0] = 1.0
    picture = colors(ds.render.heatmap(attribution, image, alpha=0.5))
    gray = (0.25 + 0.6 * 0.299) * 255  # the gray copy of red
    np.testing.assert_allclose(picture[3, 3], [gray] * 3, atol=1)
    assert np.abs(picture[0, 0] - gray).max() > 50  # colored where the map is


def test_figures_display_in_notebooks_and_save(tmp_path):
    figure = ds.render.heatmap(torch.randn(8, 8), Image.new("RGB", (16, 16), "white"))
    assert figure.size == (8, 8)  # the photo is resized to the map
    assert Image.open(io.BytesIO(figure._repr_png_())).size == (8, 8)
    assert figure.save(tmp_path / "map.png").exists()
    with pytest.raises(ValueError, match="draws one map, got a batch of 2"):
        ds.render.heatmap(torch.randn(2, 1, 8, 8))


def test_grid_of_methods_by_images():
    maps = {
        "saliency": torch.randn(3, 3, 20, 20),
        "grad_cam": torch.rand(3, 1, 20, 20),
        "mine": torch.randn(3, 1, 20, 20),
    }
    figure = ds.render.grid(maps, torch.rand(3, 3, 20, 20), labels=["a", "b", "c"], cell=40)
    # 4 columns (image + 3 maps) and 3 rows of 40 px cells with 2 px gaps, a header and labels
    assert figure.size == (4 * 42 + 2, 16 + 3 * (40 + 14 + 2) + 2)
    assert ds.render.grid(maps, cell=40).size == (3 * 42 + 2, 16 + 3 * 42 + 2)
    with pytest.raises(ValueError, match="2 images for maps of 3"):
        ds.render.grid(maps, torch.rand(2, 3, 20, 20))
