"""The Zennit composite for each registered LRP method, to check deepscope's relevance against Zennit's on any
model (``pip install zennit``; the tests and ``benchmarks/relevance.py`` compare the two with it).

>>> from deepscope.attribution.relevance.peers import zennit_composite
>>> type(zennit_composite("lrp_epsilon_plus")).__name__
'EpsilonPlus'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepscope.attribution.relevance.layers import RelevanceError

ZENNIT_NAMES = {
    "lrp_epsilon_plus": "EpsilonPlus",
    "lrp_epsilon_plus_flat": "EpsilonPlusFlat",
    "lrp_epsilon_alpha2_beta1": "EpsilonAlpha2Beta1",
    "lrp_epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1Flat",
}


def zennit_composite(
    name: str,
    canonizers: Sequence[Any] = (),
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> Any:
    """Zennit's composite with the meaning of our method ``name``, with Zennit ``canonizers`` (e.g.
    ``[zennit.torchvision.ResNetCanonizer()]``, which merge batch norms as deepscope folds them). Zennit has no
    named epsilon or z+ composite: those are its base layer map with one rule for every convolution and linear
    layer. ``lrp_epsilon_gamma_box`` needs the input bounds ``low`` and ``high`` (see
    :func:`~deepscope.attribution.relevance.input_bounds`)."""
    try:
        from zennit import composites
        from zennit.rules import Epsilon, ZPlus
        from zennit.types import Convolution
    except ImportError:
        raise RelevanceError("comparing with Zennit needs it installed: pip install zennit") from None
    canonizers = list(canonizers)
    if name in ("lrp_epsilon", "lrp_zplus"):
        rule = Epsilon if name == "lrp_epsilon" else ZPlus
        layer_map = [*composites.layer_map_base(), (Convolution, rule()), (nn.Linear, rule())]
        return composites.LayerMapComposite(layer_map, canonizers=canonizers)
    if name == "lrp_epsilon_gamma_box":
        if low is None or high is None:
            raise RelevanceError(
                "lrp_epsilon_gamma_box's Zennit composite needs the input bounds low and high"
            )
        return composites.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    if name not in ZENNIT_NAMES:
        known = ", ".join(["lrp_epsilon", "lrp_zplus", *ZENNIT_NAMES, "lrp_epsilon_gamma_box"])
        raise RelevanceError(f"no Zennit composite for {name!r}; known: {known}")
    return getattr(composites, ZENNIT_NAMES[name])(canonizers=canonizers)
