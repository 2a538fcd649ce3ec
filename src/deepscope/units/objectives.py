"""Feature-visualization objectives: small callables that score each image of a batch, composable with ``+ - *``.

An objective reads what one forward pass produced (layer activations, the model output, the pixel image) and
returns one value per image, ``[B]``; :func:`deepscope.units.visualize` maximizes their sum. Strings name the
common ones:

- ``"layer:channel"``: mean activation of one channel over positions (one unit of a linear layer); ``layer`` is
  a layer name as every ``layer=`` argument reads it (``"_swish@1:5"``, ``"fc:input:3"``);
- ``"layer:channel@y,x"``: one neuron of a conv layer;
- ``"logit:cls"``: the unnormalized class score (Simonyan et al. 2014's class model; not the softmax);
- ``"layer"``: the mean squared activation of the whole layer (DeepDream, Mordvintsev et al. 2015);

and expressions combine them: ``"conv2:3 + 0.5*conv2:7"``, ``"logit:1 - logit:7"``, ``"2*(fc1:0 * fc1:1)"``.
Python code composes :class:`Objective` objects the same way and adds what a string cannot say:
:func:`direction`, :func:`diversity`, :func:`total_variation`, :func:`alpha_norm`.

>>> import deepscope as ds
>>> objective = ds.units.objective("conv2:3") - 1e-2 * ds.units.total_variation()
>>> objective
conv2:3 - 0.01*tv(beta=2)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deepscope.errors import SettingTypeError, UnitError
from deepscope.units._forward import check_unit


@dataclass
class Context:
    """What an objective reads: layer outputs, the model output (when needed) and the pixel image ``[B,C,H,W]``."""

    activations: dict[str, torch.Tensor]
    output: torch.Tensor | None
    image: torch.Tensor


class Objective:
    """A scalar per image. ``layers`` are the layers it reads, ``needs_output`` whether it reads the model output.

    Compose with ``a + b``, ``a - b``, ``number * a``, ``a * b`` (product of values) and ``-a``.
    """

    def __init__(
        self,
        function: Callable[[Context], torch.Tensor],
        name: str,
        layers: frozenset[str] = frozenset(),
        needs_output: bool = False,
        checks: tuple[Callable[[dict[str, tuple[int, ...]], tuple[int, ...] | None], None], ...] = (),
        precedence: int = 3,
    ):
        self.function = function
        self.name = name
        self.layers = frozenset(layers)
        self.needs_output = needs_output
        self.checks = checks
        self.precedence = precedence  # 1: sum, 2: product, 3: atom (for printing with parentheses)

    def __call__(self, context: Context) -> torch.Tensor:
        return self.function(context)

    def check(self, shapes: dict[str, tuple[int, ...]], output_shape: tuple[int, ...] | None) -> None:
        """Raise :class:`UnitError` where a unit or class is out of range for these layer shapes."""
        for check in self.checks:
            check(shapes, output_shape)

    # composition -------------------------------------------------------------------------------------------

    def _join(self, other: Objective, function, name: str, precedence: int) -> Objective:
        return Objective(
            function,
            name,
            self.layers | other.layers,
            self.needs_output or other.needs_output,
            self.checks + other.checks,
            precedence,
        )

    def __add__(self, other: Objective | float) -> Objective:
        other = _lift(other)
        return self._join(other, lambda c: self(c) + other(c), f"{self.name} + {other.name}", 1)

    def __radd__(self, other: float) -> Objective:
        return _lift(other) + self

    def __sub__(self, other: Objective | float) -> Objective:
        other = _lift(other)
        right = other.name if other.precedence > 1 else f"({other.name})"
        return self._join(other, lambda c: self(c) - other(c), f"{self.name} - {right}", 1)

    def __rsub__(self, other: float) -> Objective:
        return _lift(other) - self

    def __mul__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            factor = float(other)
            inner = self.name if self.precedence > 1 else f"({self.name})"
            return Objective(
                lambda c: factor * self(c),
                f"{_number(factor)}*{inner}",
                self.layers,
                self.needs_output,
                self.checks,
                2,
            )
        if not isinstance(other, Objective):
            return NotImplemented
        left = self.name if self.precedence > 1 else f"({self.name})"
        right = other.name if other.precedence > 1 else f"({other.name})"
        return self._join(other, lambda c: self(c) * other(c), f"{left} * {right}", 2)

    def __rmul__(self, other: float) -> Objective:
        return self * other

    def __neg__(self) -> Objective:
        return self * -1.0

    def __repr__(self) -> str:
        return self.name


def _number(value: float) -> str:
    return f"{value:g}"


def _lift(value: Objective | float) -> Objective:
    if isinstance(value, Objective):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        constant = float(value)
        return Objective(
            lambda c: torch.full((c.image.shape[0],), constant, device=c.image.device), _number(constant)
        )
    raise SettingTypeError(f"cannot combine an objective with {type(value).__name__}")


def _layer_check(layer: str, unit: int | None = None, position: tuple[int, int] | None = None):
    def check(shapes: dict[str, tuple[int, ...]], output_shape) -> None:
        shape = shapes[layer]
        if unit is not None:
            check_unit(layer, shape, unit, position)

    return check


# atoms ------------------------------------------------------------------------------------------------------


def channel(layer: str, unit: int) -> Objective:
    """Mean activation of channel ``unit`` of ``layer`` over all positions (for a linear layer: unit ``unit``).

    >>> channel("conv2", 3)
    conv2:3
    """

    def value(c: Context) -> torch.Tensor:
        activation = c.activations[layer]
        selected = activation[:, unit]
        return selected.flatten(1).mean(1) if selected.ndim > 1 else selected

    return Objective(value, f"{layer}:{unit}", frozenset({layer}), checks=(_layer_check(layer, unit),))


def neuron(layer: str, unit: int, y: int, x: int) -> Objective:
    """The single activation of channel ``unit`` at position ``(y, x)`` of a conv layer's map.

    >>> neuron("conv2", 3, 5, 5)
    conv2:3@5,5"""

    def value(c: Context) -> torch.Tensor:
        return c.activations[layer][:, unit, y, x]

    return Objective(
        value, f"{layer}:{unit}@{y},{x}", frozenset({layer}), checks=(_layer_check(layer, unit, (y, x)),)
    )


def logit(cls: int) -> Objective:
    """The model's unnormalized score for class ``cls`` (Simonyan et al. 2014: the score, not the softmax,
    so that the image is not rewarded for lowering the other classes).

    >>> logit(7) - logit(1)
    logit:7 - logit:1"""

    def value(c: Context) -> torch.Tensor:
        return c.output[:, cls]

    def check(shapes, output_shape) -> None:
        if output_shape is None or len(output_shape) != 1:
            raise UnitError(
                f"logit:{cls} needs a model that returns [B, classes] scores, got shape {output_shape}"
            )
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < output_shape[0]:
            raise UnitError(
                f"class {cls!r} is out of range: the model has {output_shape[0]} classes (0..{output_shape[0] - 1})"
            )

    return Objective(value, f"logit:{cls}", needs_output=True, checks=(check,))


def deepdream(layer: str) -> Objective:
    """Mean squared activation of the whole layer (DeepDream; Mordvintsev, Olah & Tyka 2015).

    >>> deepdream("conv2")
    conv2"""

    def value(c: Context) -> torch.Tensor:
        return c.activations[layer].pow(2).flatten(1).mean(1)

    return Objective(value, layer, frozenset({layer}), checks=(_layer_check(layer),))


def direction(layer: str, vector: torch.Tensor, name: str | None = None) -> Objective:
    """Activation along ``vector`` (one weight per channel): the dot product with the activation at each
    position, averaged over positions (Olah et al. 2017's "direction" in activation space).

    >>> direction("conv2", torch.ones(16), name="conv2 sum")
    conv2 sum"""
    vector = torch.as_tensor(vector).detach().flatten()

    def value(c: Context) -> torch.Tensor:
        activation = c.activations[layer]
        weights = vector.to(activation.device, activation.dtype)
        shape = (1, -1) + (1,) * (activation.ndim - 2)
        return (
            (activation * weights.view(shape)).sum(1).flatten(1).mean(1)
            if activation.ndim > 2
            else activation @ weights
        )

    def check(shapes, output_shape) -> None:
        channels = shapes[layer][0]
        if vector.numel() != channels:
            raise UnitError(
                f"direction has {vector.numel()} weights but layer {layer!r} has {channels} channels"
            )

    return Objective(value, name or f"direction({layer})", frozenset({layer}), checks=(check,))


def diversity(layer: str) -> Objective:
    """Reward for a batch whose images differ in style at ``layer``: minus the cosine similarity of each
    image's Gram matrix of channels with the other images' (Olah et al. 2017, after Nguyen et al. 2016's
    multifaceted visualization). Per image ``i``: ``-sum_{j != i} cos(G_i, G_j) / B``; needs a batch > 1.

    >>> objective("fc3:4") + 0.5 * diversity("fc1")
    fc3:4 + 0.5*diversity(fc1)"""

    def value(c: Context) -> torch.Tensor:
        activation = c.activations[layer]
        batch = activation.shape[0]
        if batch < 2:
            raise UnitError("the diversity objective needs at least 2 images (visualize(..., images=...))")
        flat = activation.flatten(2) if activation.ndim > 2 else activation[:, :, None]
        gram = torch.bmm(flat, flat.transpose(1, 2)).flatten(1)
        gram = torch.nn.functional.normalize(gram, dim=1)
        similarity = gram @ gram.T
        return -(similarity.sum(1) - similarity.diagonal()) / batch

    return Objective(value, f"diversity({layer})", frozenset({layer}), checks=(_layer_check(layer),))


def per_image(objectives: Sequence[str | Objective]) -> Objective:
    """Image ``i`` of the batch is scored by ``objectives[i]``: several units visualized in one batched run.
    ``visualize`` builds this when given a list of objectives.

    >>> per_image(["conv2:0", "conv2:1"])
    [conv2:0, conv2:1]
    """
    parts = [objective(o) for o in objectives]
    if not parts:
        raise UnitError("per_image needs at least one objective")

    def value(c: Context) -> torch.Tensor:
        if c.image.shape[0] != len(parts):
            raise UnitError(f"{len(parts)} objectives, one per image, but a batch of {c.image.shape[0]}")
        return torch.stack([part(c)[i] for i, part in enumerate(parts)])

    return Objective(
        value,
        "[" + ", ".join(p.name for p in parts) + "]",
        frozenset().union(*(p.layers for p in parts)),
        any(p.needs_output for p in parts),
        tuple(check for p in parts for check in p.checks),
    )


def total_variation(beta: float = 2.0) -> Objective:
    """Total variation of the pixel image, ``sum ((dx)^2 + (dy)^2)^(beta/2)`` averaged over pixels (the
    TV^beta prior of Mahendran & Vedaldi 2015). A penalty: subtract it, ``objective - w * total_variation()``.

    >>> objective("conv2:3") - 0.1 * total_variation(beta=1)
    conv2:3 - 0.1*tv(beta=1)"""

    def value(c: Context) -> torch.Tensor:
        return tv_beta(c.image, beta).flatten(1).mean(1)

    return Objective(value, f"tv(beta={_number(beta)})")


def alpha_norm(alpha: float = 6.0) -> Objective:
    """``|x - 0.5|^alpha`` of the pixel image averaged over pixels (the alpha-norm prior of Mahendran & Vedaldi
    2015, on pixels centered at mid-gray). A penalty: subtract it.

    >>> objective("conv2:3") - 1e-3 * alpha_norm(6)
    conv2:3 - 0.001*alpha_norm(6)"""

    def value(c: Context) -> torch.Tensor:
        return (c.image - 0.5).abs().pow(alpha).flatten(1).mean(1)

    return Objective(value, f"alpha_norm({_number(alpha)})")


def tv_beta(image: torch.Tensor, beta: float) -> torch.Tensor:
    """Per channel and pixel ``((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2)``, ``[B,C,H,W]``, with the
    differences past the last row/column taken as zero (Mahendran & Vedaldi 2015's TV^beta, as in their code)."""
    padded = torch.nn.functional.pad(image, (0, 1, 0, 1), mode="replicate")
    dx = padded[..., :-1, 1:] - image
    dy = padded[..., 1:, :-1] - image
    squared = dx.pow(2) + dy.pow(2)
    if beta == 2:
        return squared
    return squared.clamp_min(1e-12).pow(beta / 2)


# strings -----------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.:])")
# A layer name as every layer= argument reads it (PATH, PATH@N, PATH:input), then an optional ':unit' and '@y,x'.
_LAYER = r"[\w.]+(?:@\d+)?(?::input)?"
_ATOM = re.compile(rf"{_LAYER}(?::-?\d+(?:@-?\d+,-?\d+)?)?")
_ATOM_PARTS = re.compile(rf"^(?P<layer>{_LAYER}?)(?::(?P<unit>-?\d+)(?:@(?P<y>-?\d+),(?P<x>-?\d+))?)?$")


def objective(spec: str | Objective) -> Objective:
    """Parse an objective string (see the module docstring) or return an :class:`Objective` as is.

    >>> objective("logit:3 - 0.5*logit:5")
    logit:3 - 0.5*logit:5
    """
    if isinstance(spec, Objective):
        return spec
    if not isinstance(spec, str):
        raise UnitError(f"an objective is a string like 'conv2:3' or an Objective, got {type(spec).__name__}")
    parser = _Parser(spec)
    result = parser.expression()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()!r}")
    if not isinstance(result, Objective):
        raise UnitError(f"objective {spec!r} is a constant; name a layer, a unit or a class")
    return result


def atom(text: str) -> Objective:
    """One objective atom: ``layer``, ``layer:unit``, ``layer:unit@y,x`` or ``logit:cls``."""
    match = _ATOM_PARTS.match(text)
    if not match:
        raise UnitError(
            f"cannot read objective {text!r}: expected 'layer', 'layer:unit', 'layer:unit@y,x' or 'logit:class'"
        )
    layer, unit, y, x = match["layer"], match["unit"], match["y"], match["x"]
    if unit is not None and int(unit) < 0:
        raise UnitError(f"unit {unit} in {text!r} is negative; units are numbered from 0")
    if layer == "logit":
        if unit is None or y is not None:
            raise UnitError(f"cannot read objective {text!r}: a class score is written 'logit:class'")
        return logit(int(unit))
    if unit is None:
        return deepdream(layer)
    if y is not None:
        return neuron(layer, int(unit), int(y), int(x))
    return channel(layer, int(unit))


class _Parser:
    """expression := term (('+'|'-') term)*;  term := factor ('*' factor)*;
    factor := number | atom | '(' expression ')' | '-' factor"""

    def __init__(self, text: str):
        self.text = text
        self.tokens: list[str] = []
        position = 0
        while position < len(text):
            if text[position].isspace():
                position += 1
                continue
            if text[position] in "+-*()":
                self.tokens.append(text[position])
                position += 1
                continue
            match = _NUMBER.match(text, position) or _ATOM.match(text, position)
            if not match or match.end() == position:
                self.fail(f"unexpected character {text[position]!r} at position {position}")
            self.tokens.append(match.group())
            position = match.end()
        self.index = 0

    def fail(self, why: str):
        raise UnitError(
            f"cannot read objective {self.text!r}: {why}. Write e.g. 'conv2:3', 'conv2:3@4,4', 'logit:7', "
            "'conv2' or combinations like 'conv2:3 - 0.5*conv2:4'"
        )

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            self.fail("it ends too early")
        self.index += 1
        return token

    def expression(self):
        value = self.term()
        while self.peek() in ("+", "-"):
            operator = self.take()
            right = self.term()
            value = value + right if operator == "+" else value - right
        return value

    def term(self):
        value = self.factor()
        while self.peek() == "*":
            self.take()
            right = self.factor()
            value = (
                value * right
                if isinstance(value, Objective) or not isinstance(right, Objective)
                else right * value
            )
        return value

    def factor(self):
        token = self.take()
        if token == "(":
            value = self.expression()
            if self.take() != ")":
                self.fail("a '(' is not closed")
            return value
        if token == "-":
            return -self.factor()
        if token in ("+", "*", ")"):
            self.fail(f"unexpected {token!r}")
        if _NUMBER.fullmatch(token):
            return float(token)
        return atom(token)
