"""Targets and the method registry's error paths (the methods themselves are tested per family)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepscope as ds
from deepscope.attribution.base import MethodError, method_info
from deepscope.attribution.targets import Classes, TargetError, resolve_target
from deepscope.errors import ImageError
from deepscope.zoo.vision_model import check_inputs

LOGITS = torch.tensor([[0.0, 5.0, 1.0], [4.0, 0.0, 2.0]])


def test_class_targets():
    assert torch.equal(resolve_target(None, LOGITS)(LOGITS), torch.tensor([5.0, 4.0]))
    assert torch.equal(resolve_target(2, LOGITS)(LOGITS), torch.tensor([1.0, 2.0]))
    assert torch.equal(resolve_target([0, 2], LOGITS)(LOGITS), torch.tensor([0.0, 2.0]))
    assert torch.equal(resolve_target(torch.tensor([1, 1]), LOGITS)(LOGITS), torch.tensor([5.0, 0.0]))
    assert torch.equal(resolve_target([0, 2], LOGITS).select(torch.tensor([1])).indices, torch.tensor([2]))
    custom = resolve_target(lambda out: out.sum(1), LOGITS)
    assert torch.equal(custom(LOGITS), torch.tensor([6.0, 6.0]))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (3, "target 3 out of range for a model with 3 classes"),
        (-1, "out of range"),
        ([0, 1, 2], "3 targets for a batch of 2"),
    ],
)
def test_bad_class_targets(target, message):
    with pytest.raises(TargetError, match=message):
        resolve_target(target, LOGITS)


def test_region_and_box_targets():
    segmentation = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    region = ds.targets.Region(1, mask)
    assert torch.equal(region(segmentation), torch.tensor([4.0 + 7.0, 16.0 + 19.0]))
    assert torch.equal(region({"out": segmentation}), region(segmentation))
    with pytest.raises(TargetError, match="class 5 out of range"):
        ds.targets.Region(5, mask)(segmentation)
    with pytest.raises(TargetError, match="class targets need a \\[B, classes\\] output"):
        resolve_target(None, segmentation)
    detections = [
        {"scores": torch.tensor([0.9, 0.5]), "boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2])}
    ]
    assert torch.equal(ds.targets.Box(1)(detections), torch.tensor([0.5]))
    with pytest.raises(TargetError, match="Box index 2 is out of range"):
        ds.targets.Box(2)(detections)


def test_unknown_method_lists_known_ones():
    with pytest.raises(MethodError, match="unknown heat-map method 'no_such_method'"):
        method_info("no_such_method")
    with pytest.raises(MethodError):
        ds.attribute(torch.nn.Conv2d(3, 1, 1), torch.zeros(1, 3, 4, 4), "no_such_method")


def test_inputs_must_be_one_image_batch():
    with pytest.raises(ImageError, match="mixed sizes"):
        check_inputs([torch.zeros(3, 4, 4), torch.zeros(3, 5, 4)])
    with pytest.raises(ImageError, match=r"\[B,C,H,W\] batch, got shape \[3, 4, 4\]"):
        check_inputs(torch.zeros(3, 4, 4))
    with pytest.raises(ImageError, match="float tensor"):
        check_inputs(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert isinstance(Classes(torch.tensor([0])), Classes)


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ("3", "the string '3'; pass the index itself"),
        (2.5, "got 2.5 \\(a float\\)"),
        (True, "got True"),
        (torch.tensor([0.5, 1.0]), "torch.float32 values"),
        ([object()], "integer class index or a list of them"),
    ],
)
def test_a_class_target_is_an_integer_or_an_error_saying_so(lenet, target, complaint):
    """Target '3' was a raw error from torch, and 2.5 silently became class 2."""
    x = torch.zeros(2, 1, 28, 28)
    for method in ("saliency", "occlusion"):
        with pytest.raises(TargetError, match=complaint):
            ds.attribute(lenet, x, method, target=target)
    assert ds.attribute(lenet, x, "saliency", target=np.int64(3)).shape == x.shape
