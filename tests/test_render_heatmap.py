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
    position, magnitude, ends = normalize(values, signed=True, clip=50)  # the median |v| (0.75) is full color
    np.testing.assert_allclose(position, [[0.0, 0.5, 0.5 + 0.5 / 1.5, 1.0]])
    np.testing.assert_allclose(magnitude, [[1.0, 0.0, 0.5 / 0.75, 1.0]])
    assert ends == (-0.75, 0.75)
    position, _, ends = normalize(torch.tensor([[2.0, 4.0, 6.0]]), signed=False, clip=100)
    np.testing.assert_allclose(position, [[0.0, 0.5, 1.0]])
    assert ends == (2.0, 6.0)


def colors(figure) -> np.ndarray:
    return np.asarray(figure.image, dtype=float)


def test_negative_evidence_is_blue_and_positive_red_without_an_image():
    attribution = torch.zeros(1, 4, 4)
    attribution[0, 0, 0], attribution[0, 3, 3] = -1.0, 1.0
    picture = colors(ds.render.heatmap(attribution, colorbar=False))
    red, blue = picture[3, 3], picture[0, 0]
    assert red[0] > red[2] + 50 and blue[2] > blue[0] + 50  # RdBu_r's dark ends


def test_cams_show_their_positive_part_in_a_sequential_colormap():
    cam = torch.tensor([[[-5.0, 0.0], [1.0, 2.0]]])
    picture = colors(ds.render.heatmap(cam, method="grad_cam", colorbar=False))
    # inferno: the negative and zero positions are both the darkest color, 2 the brightest
    np.testing.assert_array_equal(picture[0, 0], picture[0, 1])
    assert picture[1, 1].sum() > picture[1, 0].sum() > picture[0, 0].sum()


def test_overlay_keeps_the_photo_where_the_map_is_zero():
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0  # pure red photo
    attribution = torch.zeros(3, 4, 4)
    attribution[:, 0, 0] = 1.0
    picture = colors(ds.render.heatmap(attribution, image, alpha=0.5, colorbar=False))
    gray = (0.25 + 0.6 * 0.299) * 255  # the gray copy of red
    np.testing.assert_allclose(picture[3, 3], [gray] * 3, atol=1)
    assert np.abs(picture[0, 0] - gray).max() > 50  # colored where the map is


def test_figures_display_in_notebooks_and_save(tmp_path):
    figure = ds.render.heatmap(torch.randn(8, 8), Image.new("RGB", (16, 16), "white"), colorbar=False)
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
    figure = ds.render.grid(maps, torch.rand(3, 3, 20, 20), labels=["a", "b", "c"], cell=40, legend=False)
    # 4 columns (image + 3 maps) and 3 rows of 40 px cells with 2 px gaps, a header and labels
    assert figure.size == (4 * 42 + 2, 16 + 3 * (40 + 14 + 2) + 2)
    assert ds.render.grid(maps, cell=40, legend=False).size == (3 * 42 + 2, 16 + 3 * 42 + 2)
    # the legend: two color scales with their meaning under the grid, as wide as its text needs
    legend = ds.render.grid(maps, cell=40)
    assert legend.size[0] > 3 * 42 + 2 and legend.size[1] == 16 + 3 * 42 + 2 + 2 * 24 + 4
    with pytest.raises(ValueError, match="2 images for maps of 3"):
        ds.render.grid(maps, torch.rand(2, 3, 20, 20))


def test_a_signed_map_has_a_color_bar_with_its_values_and_meaning():
    attribution = torch.zeros(1, 16, 16)
    attribution[0, 0, 0], attribution[0, 15, 15] = -2.0, 2.0
    figure = ds.render.heatmap(attribution, method="integrated_gradients", clip=100)
    picture = colors(figure)
    assert figure.size[0] == 240 and figure.size[1] > 16 + 20  # the map, then the bar and two lines of text
    bar = picture[16 + 3 + 5]  # the middle row of the bar
    assert (
        bar[5][2] > bar[5][0] + 50 and bar[-6][0] > bar[-6][2] + 50
    )  # blue at -2 on the left, red at +2 right
    plain = colors(ds.render.heatmap(attribution, colorbar=False))
    np.testing.assert_array_equal(picture[:16, 112:128], plain)  # the map itself is unchanged, centered
    from deepscope.render.heatmap import MEANINGS

    assert (
        "evidence for the class" in MEANINGS["attribution"]
        and "raises the class score" in MEANINGS["sensitivity"]
    )


@pytest.mark.parametrize(
    ("attribution", "complaint"),
    [
        (torch.full((8, 8), float("nan")), "64 NaN or infinite values of 64"),
        (torch.tensor([[0.0, float("inf")]]), "1 NaN or infinite values of 2"),
        (torch.zeros(3, 0, 5), "the map is empty"),
    ],
)
def test_maps_without_a_scale_are_refused(attribution, complaint):
    with pytest.raises(ds.errors.ImageError, match=complaint):
        ds.render.heatmap(attribution)


def test_a_map_is_drawn_over_the_original_photo_where_the_model_saw_it():
    """The overlay was drawn over the 224 x 224 center crop only; with the preprocessing it lands on the part of
    the photo the crop came from, at the photo's size and aspect."""
    preprocessing = ds.Preprocessing(resize=256, crop=(224, 224))
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 600, 3), dtype=np.uint8))
    left, top, right, bottom = preprocessing.crop_box(*photo.size)
    # the box is where torchvision's pipeline takes its pixels from: cut there and resize, and they agree
    model_input = preprocessing.pixel_transform()(photo)
    cut = photo.resize((round(photo.width * 256 / 300), 256), Image.BILINEAR)  # what Resize(256) makes
    scale = 256 / 300
    crop = cut.crop((round(left * scale), round(top * scale), round(right * scale), round(bottom * scale)))
    assert crop.size == (224, 224)
    np.testing.assert_allclose(np.asarray(crop) / 255, model_input.permute(1, 2, 0).numpy(), atol=0.05)
    # a map that is hot in its top-left corner only
    attribution = torch.zeros(1, 224, 224)
    attribution[0, :20, :20] = 1.0
    figure = ds.render.heatmap(attribution, photo, preprocessing=preprocessing, colorbar=False)
    picture = colors(figure)
    assert figure.size == photo.size
    gray = (np.asarray(photo, dtype=float) / 255 @ [0.299, 0.587, 0.114]) * 0.6 + 0.25
    untouched = picture[150, 20] / 255  # left of the crop: the photo in gray, no color
    np.testing.assert_allclose(untouched, [gray[150, 20]] * 3, atol=0.01)
    hot = picture[round(top) + 5, round(left) + 5] / 255  # inside the box, at the map's hot corner
    assert hot.max() - hot.min() > 0.2
