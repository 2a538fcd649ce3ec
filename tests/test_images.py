"""Loading images and bundled data: every kind of input, and a clear error for each bad one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import deepscope as ds
from deepscope.errors import ImageError


def test_paths_pil_images_and_arrays(tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    from_path, from_pil, from_array = ds.load_images([path, Image.fromarray(array), array])
    for image in (from_path, from_pil, from_array):
        assert image.mode == "RGB" and image.size == (30, 20)
        assert np.array_equal(np.asarray(image), array)
    assert len(ds.load_images(str(path))) == 1


def test_palette_images_convert_losslessly(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([255, 0, 0] * 256)
    assert ds.load_images(palette)[0].getpixel((0, 0)) == (255, 0, 0)


def test_grayscale_images_for_grayscale_models(tmp_path):
    digit = ds.datasets.mnist5k().images[0]
    assert ds.load_images(digit, mode="L")[0].mode == "L"
    with pytest.raises(ImageError, match=r"grayscale \(mode L\).*mode='L'"):
        ds.load_images(digit)


def test_convert_reads_images_as_image_folders_do():
    digit = ds.datasets.mnist5k().images[0]
    with pytest.raises(ImageError, match=r"convert=True \(--convert on the command line\)"):
        ds.load_images(digit)
    rgb = ds.load_images(digit, convert=True)[0]
    assert rgb.mode == "RGB" and (np.asarray(rgb) == np.asarray(digit)[:, :, None]).all()
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 128))  # half transparent: shown half way to a white page
    assert ds.load_images(rgba, convert=True)[0].getpixel((0, 0)) == (132, 137, 142)
    gray = ds.load_images(Image.new("RGB", (4, 4), (200, 200, 200)), mode="L", convert=True)[0]
    assert gray.mode == "L" and gray.getpixel((0, 0)) == 200
    same = Image.new("RGB", (4, 4))
    assert ds.load_images(same, convert=True)[0] is same


def test_rgba_is_refused_with_the_fix():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 128))
    with pytest.raises(ImageError, match="transparency.*alpha_composite"):
        ds.load_images([rgba])
    with pytest.raises(ImageError, match="transparency"):
        ds.load_images(np.zeros((4, 4, 4), np.uint8))


def test_missing_and_non_image_files(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"")
    with pytest.raises(ImageError, match="not found.*Did you mean: cat.png"):
        ds.load_images(tmp_path / "cta.png")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt is not an image file"):
        ds.load_images(text)
    with pytest.raises(ImageError, match="is a directory"):
        ds.load_images(tmp_path)


def test_bad_arrays():
    with pytest.raises(ImageError, match=r"array 0 is float64 \[4, 4, 3\]; expected uint8 pixels"):
        ds.load_images([np.zeros((4, 4, 3))])
    with pytest.raises(ImageError, match=r"array 1 is uint8 \[4, 4, 2\]; .* with 1, 3 or 4 channels"):
        ds.load_images([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8)])
    assert ds.load_images(np.zeros((4, 4, 1), np.uint8), mode="L")[0].mode == "L"
    with pytest.raises(ImageError, match="expected a path"):
        ds.load_images([42])


def test_preprocess_refuses_mixed_sizes_without_resize():
    vm = ds.as_vision_model(torch.nn.Conv2d(3, 1, 1))
    with pytest.raises(ImageError, match="mixed sizes"):
        vm.preprocess([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])
    with pytest.raises(ImageError, match="not a PIL image"):
        vm.preprocess(["cat.png"])


def test_samples_are_real_bundled_photos():
    photos = ds.samples()
    assert set(photos) == {"chelsea", "coffee", "astronaut", "rocket", "motorcycle"}
    assert all(p.mode == "RGB" and min(p.size) >= 300 for p in photos.values())
    with pytest.raises(ImageError, match="unknown sample photo"):
        ds.samples(["cheslea"])


def test_mnist5k_is_a_labeled_torch_dataset():
    data = ds.datasets.mnist5k()
    assert isinstance(data, torch.utils.data.Dataset) and len(data) == 5000
    image, label = data[0]
    assert image.mode == "L" and image.size == (28, 28) and label in range(10)
    assert sorted(torch.bincount(data.labels).tolist())[0] > 400


GRADIENT = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # 0 .. 252


def encoded(mode: str) -> Image.Image:
    """The gradient as PIL opens it in ``mode``, as a file of that kind would hold it."""
    if mode == "I;16":
        return Image.fromarray(GRADIENT.astype(np.uint16) * 257)  # 16-bit: 0 .. 64764
    if mode == "I":
        return Image.fromarray(GRADIENT.astype(np.int32) * 257, mode="I")  # 16-bit data in 32-bit ints
    if mode == "F":
        return Image.fromarray(GRADIENT.astype(np.float32) / 255)  # floats in [0, 1]
    return Image.fromarray(GRADIENT).convert(mode)


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F"])
def test_every_grayscale_depth_reaches_the_model_as_the_same_picture(mode, tmp_path, lenet):
    """A 16-bit PNG read with mode='L' was clipped to white; each depth is now scaled by its range."""
    picture = encoded(mode)
    loaded = ds.load_images(picture, mode="L")[0]
    np.testing.assert_array_equal(np.asarray(loaded), GRADIENT)
    if mode in ("L", "I;16"):  # the formats PNG stores
        path = tmp_path / "gradient.png"
        picture.save(path)
        np.testing.assert_array_equal(np.asarray(ds.load_images(path, mode="L")[0]), GRADIENT)
    gray = ds.VisionModel(lenet.module, "lenet", ds.Preprocessing(image_mode="L", mean=(0.0,), std=(1.0,)))
    torch.testing.assert_close(gray.preprocess(picture)[0, 0], torch.from_numpy(GRADIENT).float() / 255)


@pytest.mark.parametrize("mode", ["1", "P", "CMYK", "YCbCr", "RGB"])
def test_every_color_mode_reaches_the_model_as_the_same_picture(mode):
    rgb = np.stack([GRADIENT, GRADIENT[::-1], np.full_like(GRADIENT, 90)], axis=-1)
    picture = Image.fromarray(rgb).convert(mode)
    shown = np.asarray(picture.convert("RGB")).astype(int)  # what PIL itself (a viewer) shows
    loaded = np.asarray(ds.load_images(picture, mode="RGB", convert=mode == "1")[0]).astype(int)
    assert np.abs(loaded - shown).max() <= 1


def test_out_of_range_depths_and_modes_without_a_picture_are_refused():
    with pytest.raises(ImageError, match="from -5 to 3"):
        ds.load_images(Image.fromarray(np.array([[-5.0, 3.0]], np.float32)), mode="L")
    with pytest.raises(ImageError, match="NaN"):
        ds.load_images(Image.fromarray(np.array([[np.nan, 3.0]], np.float32)), mode="L")
    with pytest.raises(ImageError, match="L\\*a\\*b\\*"):
        ds.load_images(Image.new("LAB", (2, 2)))


def test_transparency_is_flattened_onto_white_only_when_asked(tmp_path):
    palette = Image.fromarray(GRADIENT).convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])  # the darkest pixel is transparent
    for image in (palette, Image.fromarray(np.stack([GRADIENT, GRADIENT * 0 + 255], -1), mode="LA")):
        with pytest.raises(ImageError, match="transparency"):
            ds.load_images(image, mode="L")
    flat = np.asarray(ds.load_images(palette, mode="L", convert=True)[0])
    assert flat[0, 0] == 255 and flat[7, 7] == GRADIENT[7, 7]


def test_frames_and_orientation_are_read_as_a_viewer_shows_them(tmp_path):
    frames = [Image.fromarray(np.full((6, 4), value, np.uint8)) for value in (10, 200)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="2 frames.*convert=True"):
        ds.load_images(path, mode="L")
    assert ds.load_images(path, mode="L", convert=True)[0].getpixel((0, 0)) == 10
    folder = tmp_path / "folder"
    folder.mkdir()
    frames[0].save(folder / "a.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(ds.load_dataset(str(folder))[0].convert("L")).shape == (6, 4)
    # a photo stored sideways with an EXIF orientation (6: turn 90 degrees clockwise to view)
    upright = np.zeros((6, 4, 3), np.uint8)
    upright[0, :] = 255  # a white top row
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))  # as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    shown = np.asarray(ds.load_images(tmp_path / "sideways.jpg")[0])
    assert shown.shape == (6, 4, 3) and shown[0].mean() > 200 and shown[1:].mean() < 60
