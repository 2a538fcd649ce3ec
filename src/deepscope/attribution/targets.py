"""What a heat map explains: a small callable ``output -> [B]`` scores, one per sample.

Targets score the output of a batch laid out like the user's batch. Methods that split a batch into sub-batches
(``batch_size`` smaller than the batch) call ``target.select(rows)`` where the target has it.

``target=None`` explains each sample's top-1 class, an ``int`` one class for every sample, a list one class per
sample. :class:`Region` explains a segmentation model's class score summed over a mask, :class:`Box` one
detection's score in a torchvision detection model, and any callable ``output -> [B]`` works too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepscope.errors import DeepscopeError


class TargetError(DeepscopeError, ValueError):
    """A target that does not fit the model's output."""


@dataclass(frozen=True)
class Classes:
    """Class scores (logits) of a classifier's ``[B, K]`` output, one class index per sample."""

    indices: torch.Tensor  # [B] long

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output.gather(1, self.indices.to(output.device)[:, None])[:, 0]

    def select(self, rows: torch.Tensor) -> Classes:
        """The target for a sub-batch (``rows`` index the original batch)."""
        return Classes(self.indices[rows.cpu()])


@dataclass(frozen=True)
class Region:
    """A segmentation model's score for class ``cls`` summed over ``mask`` (``[H,W]`` or ``[B,H,W]``, bool
    or weights) of its ``[B,K,H,W]`` output (or of ``output['out']`` for torchvision segmentation models)."""

    cls: int
    mask: torch.Tensor

    def __call__(self, output: Any) -> torch.Tensor:
        if isinstance(output, dict):
            output = output["out"]
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise TargetError(f"Region needs a [B,K,H,W] segmentation output, got {_describe(output)}")
        if not 0 <= self.cls < output.shape[1]:
            raise TargetError(f"Region class {self.cls} out of range for {output.shape[1]} classes")
        mask = self.mask.to(output.device, output.dtype)
        if mask.shape[-2:] != output.shape[-2:]:
            raise TargetError(
                f"Region mask is {tuple(mask.shape[-2:])}, output is {tuple(output.shape[-2:])}"
            )
        return (output[:, self.cls] * mask).flatten(1).sum(1)

    def select(self, rows: torch.Tensor) -> Region:
        return self if self.mask.ndim == 2 else Region(self.cls, self.mask[rows.to(self.mask.device)])


@dataclass(frozen=True)
class Box:
    """The score of detection ``index`` (in the model's ranked output) of a torchvision detection model,
    whose eval-mode output is a list of dicts with ``boxes``, ``labels`` and ``scores``."""

    index: int = 0

    def __call__(self, output: Any) -> torch.Tensor:
        if not isinstance(output, (list, tuple)) or not all(
            isinstance(o, dict) and "scores" in o for o in output
        ):
            raise TargetError(
                f"Box needs a detection output (list of dicts with 'scores'), got {_describe(output)}"
            )
        scores = []
        for sample, detections in enumerate(output):
            if self.index >= len(detections["scores"]):
                raise TargetError(
                    f"sample {sample} has {len(detections['scores'])} detections; Box index {self.index} is out of range"
                )
            scores.append(detections["scores"][self.index])
        return torch.stack(scores)

    def select(self, rows: torch.Tensor) -> Box:
        return self


TargetLike = int | Sequence[int] | torch.Tensor | Callable[[Any], torch.Tensor] | None


def class_indices(target: Any) -> torch.Tensor:
    """A class target (an int, a NumPy integer, or a list, array or tensor of them) as a flat long tensor of class
    indices on the CPU; anything else (a string, a fraction, a bool) is a :class:`TargetError` saying what a class
    target is, instead of a cast that turns ``2.5`` into 2.

    >>> class_indices([3, 1]).tolist(), class_indices(np.int64(7)).tolist()
    ([3, 1], [7])
    >>> class_indices(2.5)
    Traceback (most recent call last):
    ...
    deepscope.attribution.targets.TargetError: a class target is an integer class index, got 2.5 (a float)
    """
    if isinstance(target, str):
        raise TargetError(
            f"a class target is an integer class index, got the string {target!r}; pass the index itself "
            "(vm.labels.index(name) finds a class by name)"
        )
    if isinstance(target, (bool, np.bool_)) or (isinstance(target, float) and not isinstance(target, bool)):
        raise TargetError(
            f"a class target is an integer class index, got {target!r} (a {type(target).__name__})"
        )
    try:
        values = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(
            f"a class target is an integer class index or a list of them, got {target!r}"
        ) from None
    if (
        values.dtype == torch.bool
        or values.is_floating_point()
        or values.is_complex()
        or values.dtype == torch.uint8
    ):
        shown = values.flatten()[:4].tolist()
        raise TargetError(f"class targets are integer class indices, got {values.dtype} values {shown}")
    return values.flatten().to(torch.long).cpu()


def resolve_target(target: TargetLike, output: Any) -> Callable[[Any], torch.Tensor]:
    """Turn ``target`` into a callable ``output -> [B]`` scores, checking it against this ``output``.

    >>> import torch
    >>> scores = resolve_target(None, torch.tensor([[0.1, 2.0], [3.0, 0.0]]))
    >>> scores(torch.tensor([[0.1, 2.0], [3.0, 0.0]]))
    tensor([2., 3.])
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise TargetError(
            f"class targets need a [B, classes] output, got {_describe(output)}; "
            "pass ds.targets.Region / ds.targets.Box or a callable output -> [B] scores"
        )
    batch, classes = output.shape
    if target is None:
        return Classes(output.detach().argmax(1))
    indices = class_indices(target)
    if indices.numel() == 1:
        indices = indices.expand(batch).clone()
    if indices.numel() != batch:
        raise TargetError(f"{indices.numel()} targets for a batch of {batch}")
    bad = indices[(indices < 0) | (indices >= classes)]
    if bad.numel():
        raise TargetError(
            f"target {int(bad[0])} out of range for a model with {classes} classes (0..{classes - 1})"
        )
    return Classes(indices)


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {list(output.shape)}"
    return f"a {type(output).__name__}"
