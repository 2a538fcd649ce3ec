"""Layer-wise relevance propagation (Bach et al. 2015) and deep Taylor decomposition (Montavon et al. 2017).

Rules (``rules.py``) say how one linear layer redistributes relevance; a :class:`Composite` says which layer gets
which rule; the engine (``engine.py``) runs the model once, turning each operation into its rule, and propagates
the target's score back to the input in one backward pass. The registered methods (``composites.py``) are the
composites of Zennit with the same names: ``lrp_epsilon``, ``lrp_zplus``, ``lrp_epsilon_plus``,
``lrp_epsilon_plus_flat``, ``lrp_epsilon_alpha2_beta1``, ``lrp_epsilon_alpha2_beta1_flat``,
``lrp_epsilon_gamma_box``.
"""

from deepscope.attribution.relevance.composites import (
    LRP,
    LRPEpsilon,
    LRPEpsilonAlpha2Beta1,
    LRPEpsilonAlpha2Beta1Flat,
    LRPEpsilonGammaBox,
    LRPEpsilonPlus,
    LRPEpsilonPlusFlat,
    LRPZPlus,
)
from deepscope.attribution.relevance.engine import (
    Composite,
    LayerRule,
    input_bounds,
    lrp,
    trace_rules,
)
from deepscope.attribution.relevance.layers import LinearLayer, RelevanceError
from deepscope.attribution.relevance.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
    stabilize,
)

__all__ = [
    "LRP",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LRPEpsilon",
    "LRPEpsilonAlpha2Beta1",
    "LRPEpsilonAlpha2Beta1Flat",
    "LRPEpsilonGammaBox",
    "LRPEpsilonPlus",
    "LRPEpsilonPlusFlat",
    "LRPZPlus",
    "LayerRule",
    "LinearLayer",
    "RelevanceError",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "input_bounds",
    "lrp",
    "stabilize",
    "trace_rules",
]
