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
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index, got {target!r}")
    if isinstance(target, int):
        indices = torch.full((batch,), target, dtype=torch.long)
    else:
        indices = torch.as_tensor(target, dtype=torch.long).flatten().cpu()
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
