"""Transformer family: attention rollout.

The attention probabilities of every layer are read during one forward (no backward, inference mode) by
intercepting, for the duration of that forward, the calls that compute attention:

- ``F.scaled_dot_product_attention`` (timm's fused attention, and most modern code): the probabilities
  ``softmax(q k^T * scale + mask)`` are recomputed from its query and key;
- ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, torchvision's ViT): called with
  ``need_weights=True, average_attn_weights=False`` so that torch returns the per-head weights;
- an explicit softmax over a square ``[B, heads, N, N]`` score tensor (timm with ``fused_attn=False``).

Attention computed any other way (custom kernels, TorchScript) is not seen; a model with none raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from deepscope.attribution.base import Attribution, MethodError, chunks, register, upsample
from deepscope.attribution.layers import layout_of
from deepscope.attribution.targets import TargetLike

_SOFTMAX = {torch.softmax, torch.Tensor.softmax, F.softmax}


class _RecordAttention(TorchFunctionMode):
    """Records head-fused attention probabilities ``[B, N, N]`` of each attention call, in call order."""

    def __init__(self, fuse):
        super().__init__()
        self.fuse = fuse
        self.maps: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.maps.append(self.fuse(_sdpa_probabilities(*args, **kwargs)))
            return func(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            # torch passes every argument after out_proj_bias by keyword here
            wanted = kwargs.get("need_weights", True)
            average = kwargs.get("average_attn_weights", True)
            output, weights = func(*args, **dict(kwargs, need_weights=True, average_attn_weights=False))
            self.maps.append(self.fuse(weights if weights.ndim == 4 else weights[None]))
            if not wanted:
                return output, None
            return output, weights.mean(-3) if average else weights
        result = func(*args, **kwargs)
        if func in _SOFTMAX and isinstance(result, torch.Tensor) and result.ndim == 4:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim in (-1, 3) and result.shape[-1] == result.shape[-2]:
                self.maps.append(self.fuse(result))
        return result


def _sdpa_probabilities(
    query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
) -> torch.Tensor:
    """The attention probabilities of ``F.scaled_dot_product_attention`` (dropout left out: eval)."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
    scores = (query @ key.transpose(-2, -1)).float() * scale
    if is_causal:
        length, source = scores.shape[-2:]
        causal = torch.ones(length, source, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores.softmax(-1)


FUSIONS = {
    "mean": lambda maps: maps.float().mean(1),
    "max": lambda maps: maps.float().amax(1),
    "min": lambda maps: maps.float().amin(1),
}


@register(
    "attention_rollout",
    family="transformer",
    space="layer",
    passes="1 forward, no backward",
    reference="Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers: attention rollout, heads "
    "averaged, residual as 0.5 A + 0.5 I, class-token row",
)
class AttentionRollout(Attribution):
    """Attention rollout (Abnar & Zuidema 2020): per layer ``0.5 A + 0.5 I`` with ``A`` the attention
    averaged over heads (``head_fusion`` 'max'/'min' for the common variants), multiplied from the first
    layer to the last; the map is the row of the class token (first token; the mean of all rows for a model
    without prefix tokens) over the patch tokens, reshaped to the patch grid worked out from the token count.

    It explains what the network attends to, not a class: a ``target`` is refused (``ds.explain`` gives it
    none).

    >>> import torch, torchvision, deepscope as ds
    >>> vit = torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    >>> ds.attribute(vit, torch.rand(1, 3, 32, 32), "attention_rollout").shape
    torch.Size([1, 1, 32, 32])
    """

    default_batch_size = 32
    uses_target = False

    @dataclass(frozen=True, eq=False)
    class Options(Attribution.Options):
        head_fusion: str = "mean"
        upsample: bool = True

        def check(self) -> None:
            if self.head_fusion not in FUSIONS:
                raise MethodError(
                    f"head_fusion must be one of {', '.join(FUSIONS)}, got {self.head_fusion!r}"
                )

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        batch, _, height, width = inputs.shape
        size = self.chunk_size(inputs)
        maps = []
        for rows in chunks(batch, size, inputs.device):
            recorder = _RecordAttention(FUSIONS[self.options.head_fusion])
            with torch.inference_mode(), recorder:
                self.vm.module(inputs[rows])
            self.passes.add(len(rows), batch, backward=False)
            maps.append(self._rollout(recorder.maps, (height, width)))
        result = torch.cat(maps).to(inputs.dtype)
        return upsample(result, (height, width)) if self.options.upsample else result

    def _rollout(self, attentions: list[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        if not attentions:
            raise MethodError(
                f"attention_rollout saw no attention in the forward of {self.vm.name} (it reads "
                "F.scaled_dot_product_attention, nn.MultiheadAttention and explicit softmax attention)"
            )
        tokens = attentions[0].shape[-1]
        layout = layout_of((1, tokens, 1), input_size)
        if layout is None or any(a.shape[-1] != tokens for a in attentions):
            raise MethodError(
                f"attention over {tokens} tokens does not match a patch grid of the {input_size} input "
                "(or the token count changes between layers); attention_rollout needs a plain ViT"
            )
        eye = torch.eye(tokens, device=attentions[0].device)
        rollout = eye.expand_as(attentions[0])
        for attention in attentions:
            rollout = (0.5 * attention + 0.5 * eye) @ rollout
        rows = rollout[:, 0] if layout.prefix else rollout.mean(1)
        grid = rows[:, layout.prefix :].reshape(-1, 1, *layout.grid)
        return grid
