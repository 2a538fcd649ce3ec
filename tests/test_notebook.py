"""In a notebook every result shows itself: a picture and a short summary, not a tensor dump."""

from __future__ import annotations

import base64
import importlib
import io

import pytest
import torch
from PIL import Image

import deepscope as ds


@pytest.fixture(scope="module")
def shell():
    """A real IPython shell, with deepscope's displays registered as `import deepscope` does inside IPython."""
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    instance = interactiveshell.InteractiveShell.instance()
    importlib.reload(ds)  # the package registers its displays when it finds the running shell
    return instance


def pictures_in(html: str) -> list[Image.Image]:
    found = []
    for part in html.split("data:image/png;base64,")[1:]:
        found.append(Image.open(io.BytesIO(base64.b64decode(part.split("'")[0]))))
    return found


def shown(shell, result) -> dict:
    data, _ = shell.display_formatter.format(result)
    return data


def test_results_display_as_pictures_with_a_summary(shell, lenet, tmp_path):
    digits = ds.datasets.mnist5k("test")
    x = lenet.preprocess(digits.images[:2])
    cases = {
        "heat maps": (ds.explain(lenet, x, ["saliency", "grad_cam"]), "2 heat maps"),
        "top patches": (
            ds.units.top_patches(lenet, digits.subset(range(100)), "conv2", units=[0, 1], k=3)["conv2"],
            "top patches",
        ),
        "features": (
            ds.units.visualize(lenet, "conv2:3", steps=2),
            "feature visualization</b> of <code>conv2:3</code>",
        ),
        "inversion": (
            ds.units.invert(lenet, x[:1], "conv1", schedule=[(2, 1.0)]),
            "inversion</b> from <code>conv1</code>",
        ),
        "workspace": (
            ds.atlas.scan(lenet, digits.subset(range(60)), out=tmp_path / "ws"),
            "60 samples (0 skipped)",
        ),
    }
    for name, (result, summary) in cases.items():
        html = shown(shell, result)["text/html"]
        assert summary in html, (name, html[:300])
        assert pictures_in(html) and all(picture.size[0] > 20 for picture in pictures_in(html)), name
    inputs = x.clone().requires_grad_()
    with ds.capture(lenet, ["conv1", "fc3"], gradients=True) as recording:
        torch.autograd.grad(
            lenet(inputs)[:, 3].sum(), inputs
        )  # not .backward(): the shared model keeps no .grad
    html = shown(shell, recording)["text/html"]
    assert "<code>conv1</code></td><td>[2, 6, 28, 28]</td><td>[2, 6, 28, 28]" in html
    assert shown(shell, ds.graph(lenet))["image/svg+xml"].lstrip().startswith("<svg")


def test_an_evaluation_shows_its_ranking_and_curves(shell, lenet):
    x = lenet.preprocess(ds.datasets.mnist5k("test").images[:4])
    result = ds.evaluate(lenet, x, ["saliency", "grad_cam"], ["deletion", "insertion"])
    html = shown(shell, result)["text/html"]
    assert "mean_rank" in html and len(pictures_in(html)) == 2


def test_the_displays_name_existing_classes():
    """The registration is by name (nothing is imported at `import deepscope`): each name must exist."""
    for (module, name), mime in ds._DISPLAYS.items():
        assert hasattr(importlib.import_module(module), name), (module, name)
        assert mime in ("text/html", "image/svg+xml")
