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
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 128))
    assert ds.load_images(rgba, convert=True)[0].getpixel((0, 0)) == (10, 20, 30)
    gray = ds.load_images(Image.new("RGB", (4, 4), (200, 200, 200)), mode="L", convert=True)[0]
    assert gray.mode == "L" and gray.getpixel((0, 0)) == 200
    same = Image.new("RGB", (4, 4))
    assert ds.load_images(same, convert=True)[0] is same


def test_rgba_is_refused_with_the_fix():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 128))
    with pytest.raises(ImageError, match="alpha channel.*alpha_composite"):
        ds.load_images([rgba])
    with pytest.raises(ImageError, match="alpha channel"):
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
