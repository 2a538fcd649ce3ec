"""Forward-only copies of a model: the same function in eval mode, with less work per image.

Perturbation metrics and methods send hundreds of perturbed images through the model and keep only its output,
so their cost is the eval-mode forward. There, a batch norm is a fixed affine map per channel, and it can be folded
into the convolution before it (the folded kernel is the kernel scaled per output channel, the folded bias the
shifted one); a zero padding module in front of a convolution becomes the convolution's own padding (see
:func:`_fold_paddings` for uneven ones); a ReLU or ReLU6 right after a convolution can overwrite the convolution's
fresh output; and 2x2 max pooling is cheaper as two pairwise maxima than through torch's CPU pooling kernel. Each
removes a pass over a feature map or a slow kernel. On EfficientNet-Lite0 (padding, conv, BN, ReLU6 each time) the
forward of 8 images channels-last goes from 20 to 9-10 ms per image on 2 CPU cores, and LeNet-5's forward of 64
digits from 2.4 to 1.5 ms; torch's own ``fx`` fusion leaves EfficientNet-Lite0 as it is, because its convolutions
are an ``nn.Conv2d`` subclass with a padding module in front.

The copy is a ``torch.fx`` trace of a copy of the model's modules that shares every parameter and buffer with it
(only the folded kernels are new tensors), so that Python side effects of the model's code while it is traced
(counters, caches) land on the copy; nothing of the user's model changes. A model that fx cannot trace (Python
control flow on tensor values) or that has nothing to fold runs as it is.

A pass that also reads some layers (a dataset scan) cannot hook the copy's modules: folded ones are gone. Instead
the trace places a call of :class:`Taps` wherever such a layer hands over its output (or receives its input), in
the order hooks would fire, before any fold: a recorded tensor then has a second user, so nothing is folded into
it or overwrites it, and it is the same tensor the model's hook would see.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import fx, nn

from deepscope.errors import DeepscopeError, SettingError
from deepscope.probe.hooks import first_tensor, layer_hooks
from deepscope.probe.layers import split_address
from deepscope.zoo.vision_model import VisionModel

_CONV_FUNCTIONS = (torch.conv2d, F.conv2d)
_CONV_DEFAULTS = (None, None, None, 1, 0, 1, 1)  # input, weight, bias, stride, padding, dilation, groups


TAPS = "_deepscope_taps"  # the name of the Taps module in a traced copy


class Taps(nn.Module):
    """What a traced copy calls where the model's recorded layers produce their tensors: ``taps(name, value)``
    hands ``value``'s tensor (its first tensor if a tuple) to the ``record(name, tensor)`` set for the calling
    thread with :meth:`recording`, so that threads sharing one copy each get their own layers."""

    _is_impure = True  # fx's dead-code elimination must keep these calls, which return nothing

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, Callable[[str, torch.Tensor], None]] = {}  # thread id -> record

    @contextmanager
    def recording(self, record: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
        thread = threading.get_ident()
        self.records[thread] = record
        try:
            yield
        finally:
            del self.records[thread]

    def forward(self, name: str, value: object) -> None:
        record = self.records.get(threading.get_ident())
        tensor = first_tensor(value)
        if tensor is not None and record is not None:
            record(name, tensor)


# Held while a trace runs: fx patches nn.Module.__call__ and __getattr__ for the whole process and afterwards puts
# back what it found, so two traces interleaved in threads (A starts, B starts, A ends, B ends) would leave A's
# patch in place for good. Traces take milliseconds; they run one at a time.
_TRACING = threading.RLock()


class OwnThreadTracer(fx.Tracer):
    """``fx.Tracer`` that traces the calls of the thread that made it only, one trace at a time in the process.

    While fx traces, it patches ``nn.Module.__call__`` and ``__getattr__`` for every thread. Module calls and
    attribute reads from other threads (a scan's loader running torchvision transforms, a server thread running
    the same model, whose parameters a traced copy shares) pass through untouched here instead of being traced.
    """

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def trace(self, root: nn.Module | Callable, concrete_args: dict | None = None) -> fx.Graph:
        with _TRACING:
            return super().trace(root, concrete_args)

    def call_module(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> object:
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        return super().call_module(module, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: object, parameter_proxy_cache: dict) -> object:
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


class _TappingTracer(OwnThreadTracer):
    """Traces like ``fx.symbolic_trace`` and calls the ``Taps`` module where each of ``layers`` (layer names:
    ``NAME``, ``NAME@N``, ``NAME:input``) is called, also inside modules that are traced through."""

    def __init__(self, layers: Sequence[str]):
        super().__init__()
        self.wanted: dict[tuple[str, bool], list[tuple[str, int | None]]] = {}
        for layer in layers:
            address = split_address(layer)
            self.wanted.setdefault((address.path, address.input), []).append((layer, address.call))
        self.calls: Counter[str] = Counter()
        self.tapped: list[str] = []

    def call_module(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> object:
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        path = self.path_of_module(module)
        call = self.calls[path]
        self.calls[path] += 1
        self._tap(path, call, True, args)
        output = super().call_module(module, forward, args, kwargs)
        self._tap(path, call, False, output)
        return output

    def _tap(self, path: str, call: int, is_input: bool, value: object) -> None:
        for name, wanted_call in self.wanted.get((path, is_input), ()):
            if wanted_call is None or wanted_call == call:
                self.create_proxy("call_module", TAPS, (name, value), {})
                self.tapped.append(name)


def fold_for_inference(module: nn.Module, layers: Sequence[str] = ()) -> fx.GraphModule | None:
    """A traced copy of ``module`` (in eval mode, which it must be in) with batch norms folded into the
    convolutions before them, zero paddings into the convolutions after them, 2x2 max pooling as pairwise maxima
    and ReLU / ReLU6 in place on convolution outputs; None when fx cannot trace the model or it has none of
    these to change.

    With ``layers`` (layer names, see :mod:`deepscope.probe.layers`), the copy's ``Taps`` module
    (``copy.get_submodule(TAPS)``) receives each of them once per forward; None as well when one of them is not
    called exactly once in the trace (a module fx keeps whole hides its submodules; a module reused and named
    without ``@N`` is recorded with hooks, which report it).
    """
    shared = {id(tensor): tensor for tensor in [*module.parameters(), *module.buffers()]}
    tracer = _TappingTracer(layers)
    try:
        root = copy.deepcopy(module, shared)
        graph = tracer.trace(root)
        root.add_module(TAPS, Taps())  # after tracing: a Sequential would call it as one of its layers
        graph_module = fx.GraphModule(root, graph, type(root).__name__)
    except Exception:  # any failure to copy or trace (control flow on values...) means: run as is
        return None
    if sorted(tracer.tapped) != sorted(set(layers)):
        return None
    if not _fold_batch_norms(graph_module) + _fold_paddings(graph_module) + _pools_as_maxima(graph_module):
        return None
    _activations_in_place(graph_module)
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _attribute(graph_module: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    holder, _, name = node.target.rpartition(".")
    return getattr(graph_module.get_submodule(holder), name)


def _called_module(graph_module: fx.GraphModule, node: object, *kinds: type[nn.Module]) -> nn.Module | None:
    """The module ``node`` calls when it is exactly one of ``kinds`` (a subclass may compute something else)."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    module = graph_module.get_submodule(node.target)
    return module if type(module) in kinds else None


def _replace_by_call(graph: fx.Graph, node: fx.Node, function: Callable, arguments: tuple) -> None:
    """``node`` becomes a call of ``function`` (inserted in its place), for every one of its users."""
    with graph.inserting_before(node):
        replacement = graph.call_function(function, arguments)
    node.replace_all_uses_with(replacement)
    graph.erase_node(node)


def _conv_arguments(graph_module: fx.GraphModule, node: fx.Node) -> list | None:
    """[input, weight, bias, stride, padding, dilation, groups] of a 2D convolution node whose weight and bias
    are tensors of the model, or None."""
    if node.op == "call_module":
        conv = _called_module(graph_module, node, nn.Conv2d)
        if conv is None or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return None
        bias = None if conv.bias is None else conv.bias.detach()
        return [
            node.args[0],
            conv.weight.detach(),
            bias,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        ]
    if node.op != "call_function" or node.target not in _CONV_FUNCTIONS or node.kwargs:
        return None
    arguments = list(node.args) + list(_CONV_DEFAULTS[len(node.args) :])
    weight, bias = arguments[1], arguments[2]
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or isinstance(arguments[4], str):
        return None
    if bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr"):
        return None
    arguments[1] = _attribute(graph_module, weight).detach()
    arguments[2] = None if bias is None else _attribute(graph_module, bias).detach()
    return arguments


def _fold_batch_norms(graph_module: fx.GraphModule) -> int:
    graph, folded = graph_module.graph, 0
    for node in list(graph.nodes):
        norm = _called_module(graph_module, node, nn.BatchNorm2d)
        source = node.args[0] if norm is not None else None
        if (
            norm is None
            or not isinstance(source, fx.Node)
            or len(source.users) != 1
            or norm.running_var is None
        ):
            continue
        arguments = _conv_arguments(graph_module, source)
        if arguments is None:
            continue
        _, weight, bias, *_ = arguments
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.affine:
            scale = scale * norm.weight.detach()
        shift = -norm.running_mean * scale
        if norm.affine:
            shift = shift + norm.bias.detach()
        if bias is not None:
            shift = shift + bias * scale
        names = (f"_folded_{folded}_weight", f"_folded_{folded}_bias")
        graph_module.register_buffer(names[0], (weight * scale.view(-1, 1, 1, 1)).to(weight.dtype))
        graph_module.register_buffer(names[1], shift.to(weight.dtype))
        with graph.inserting_before(node):
            tensors = [graph.get_attr(name) for name in names]
        _replace_by_call(graph, node, torch.conv2d, (arguments[0], *tensors, *arguments[3:]))
        old = [argument for argument in source.args[1:3] if isinstance(argument, fx.Node)]
        graph.erase_node(source)
        for attribute in old:
            if not attribute.users:
                graph.erase_node(attribute)
        folded += 1
    return folded


def _fold_paddings(graph_module: fx.GraphModule) -> int:
    """A zero padding in front of a convolution becomes the convolution's own padding. An uneven one (TensorFlow's
    'same' padding before a stride-2 convolution pads 0 before and 1 after) becomes the even padding of the larger
    side, with the kernel grown by zero taps on the smaller side, so that every output still sums the same inputs
    with the same weights. That is done for depthwise convolutions only, which are bound by memory traffic: a 4x4
    depthwise kernel costs less than writing the padded map (3.4 against 19 ms for 8 maps of 96 x 112 x 112 on 2
    CPU cores), while a dense 3x3 -> 4x4 kernel costs more than its padding."""
    graph, folded = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.conv2d or len(node.args) != 7:
            continue
        source, weight_node = node.args[0], node.args[1]
        if _pair(node.args[4]) != (0, 0) or not isinstance(source, fx.Node) or len(source.users) != 1:
            continue
        padding = _called_module(graph_module, source, nn.ZeroPad2d)
        if padding is None:
            continue
        left, right, top, bottom = padding.padding
        if min(left, right, top, bottom) < 0:
            continue
        arguments = list(node.args)
        if left != right or top != bottom:
            if not isinstance(weight_node, fx.Node) or weight_node.op != "get_attr":
                continue  # a kernel computed in the forward (a parametrisation) cannot be grown here
            weight = _attribute(graph_module, weight_node).detach()
            if _pair(arguments[5]) != (1, 1) or weight.shape[1] != 1:
                continue
            grown = F.pad(
                weight,
                (max(right - left, 0), max(left - right, 0), max(bottom - top, 0), max(top - bottom, 0)),
            )
            name = f"_padded_{folded}_weight"
            graph_module.register_buffer(name, grown)
            with graph.inserting_before(node):
                arguments[1] = graph.get_attr(name)
        arguments[0] = source.args[0]
        arguments[4] = (max(top, bottom), max(left, right))
        node.args = tuple(arguments)
        graph.erase_node(source)
        if isinstance(weight_node, fx.Node) and not weight_node.users:
            graph.erase_node(weight_node)
        folded += 1
    return folded


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` (stride 2, no padding, floor mode) as the maximum of row pairs, then of column pairs:
    the same values, NaN included, in either memory layout. On 2 CPU cores it is 3-9x faster for LeNet's and
    VGG's maps (e.g. 64 x 6 x 28 x 28: 0.11 against 0.90 ms), where torch's pooling kernel is slow."""
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _pools_as_maxima(graph_module: fx.GraphModule) -> int:
    graph, changed = graph_module.graph, 0
    for node in list(graph.nodes):
        pool = _called_module(graph_module, node, nn.MaxPool2d)
        if pool is None:
            continue
        stride = pool.kernel_size if pool.stride is None else pool.stride
        if (
            _pair(pool.kernel_size) != (2, 2)
            or _pair(stride) != (2, 2)
            or _pair(pool.padding) != (0, 0)
            or _pair(pool.dilation) != (1, 1)
            or pool.ceil_mode
            or pool.return_indices
        ):
            continue
        _replace_by_call(graph, node, max_pool_2x2, (node.args[0],))
        changed += 1
    return changed


def _activations_in_place(graph_module: fx.GraphModule) -> int:
    """ReLU / ReLU6 modules whose input is a convolution's output used by nothing else write into it."""
    graph, changed = graph_module.graph, 0
    for node in list(graph.nodes):
        activation = _called_module(graph_module, node, nn.ReLU, nn.ReLU6)
        source = node.args[0] if activation is not None else None
        if (
            activation is None
            or not isinstance(source, fx.Node)
            or len(source.users) != 1
            or _conv_arguments(graph_module, source) is None
        ):
            continue
        if type(activation) is nn.ReLU6:
            _replace_by_call(graph, node, F.hardtanh, (source, 0.0, 6.0, True))
        else:
            _replace_by_call(graph, node, F.relu, (source, True))
        changed += 1
    return changed


# ----------------------------------------------------------------------------------------------------------
# the forward-only pass


# Forward-only copies kept per model (one per set of recorded layers): each holds its own folded kernels.
MAX_INFERENCE_COPIES = 4
# module -> {recorded layers: (the module's state, the copy made for both)}. Keyed by the user's module, so that a
# plain module passed again (wrapped in a new VisionModel each time) finds its copies; gone with the module.
_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], tuple[tuple, nn.Module]]] = (
    weakref.WeakKeyDictionary()
)
# Threads sharing a model make and evict its forward-only copies one at a time.
_COPIES_LOCK = threading.Lock()


def forward_only(
    vm: VisionModel,
    x: torch.Tensor,
    layers: Sequence[str] = (),
    record: Callable[[str, torch.Tensor], None] | None = None,
):
    """The model's output for ``x`` where nothing else is needed (no gradient): the forward of the perturbation
    metrics and methods, and of a dataset scan. In eval mode and without hooks on the module, it runs the copy of
    :func:`fold_for_inference` (batch norms and paddings folded into convolutions, 2x faster on
    EfficientNet-Lite0), made once per state of the parameters and set of ``layers``; otherwise the module
    itself. In the fast layout either way (:meth:`VisionModel.in_fast_layout`); equal to ``vm.module(x)`` up to
    float rounding. Call it under ``torch.inference_mode()``.

    With ``layers`` (layer names), ``record(name, tensor)`` receives each one's tensor the moment it is produced,
    exactly as from :func:`~deepscope.probe.hooks.layer_hooks` on the module, and exactly once per call: a layer
    that runs twice or not at all raises :class:`DeepscopeError`.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> seen = {}
    >>> with torch.inference_mode():
    ...     logits = forward_only(vm, torch.zeros(2, 1, 28, 28), ["conv2", "fc3:input"], seen.__setitem__)
    >>> logits.shape, {name: tuple(t.shape) for name, t in seen.items()}
    (torch.Size([2, 10]), {'conv2': (2, 16, 10, 10), 'fc3:input': (2, 84)})
    """
    layers = tuple(layers)
    module = _forward_only_module(vm, x, layers)
    if not layers:
        return vm.in_fast_layout(module, x)
    if record is None:
        raise SettingError("forward_only: layers need a record(name, tensor) callback")
    if vm.channels_last_for(x) and not vm.channels_last_works:
        # Settle the layout on one image first: a model that refuses channels-last maps fails part-way, and
        # the retry in the standard layout would hand the layers before the failure to record twice.
        vm.in_fast_layout(module, x[:1])

    def recorded(inputs: torch.Tensor):
        calls = dict.fromkeys(layers, 0)

        def deliver(name: str, tensor: torch.Tensor) -> None:
            calls[name] += 1
            if calls[name] > 1:
                raise DeepscopeError(
                    f"layer {name!r} runs more than once in one forward pass (a module reused); name one call "
                    f"as '{name}@N' (N from 0), or choose a layer that runs once, such as the module around it"
                )
            record(name, tensor)

        with _recording(vm.module, module, layers, deliver):
            output = module(inputs)
        missing = [name for name, count in calls.items() if not count]
        if missing:
            raise DeepscopeError(f"layers {missing} did not run in the forward pass of {vm.name}")
        return output

    return vm.in_fast_layout(recorded, x)


def _forward_only_module(vm: VisionModel, x: torch.Tensor, layers: tuple[str, ...]) -> nn.Module:
    state = _inference_state(vm.module)
    if state is None:
        return vm.module
    with _COPIES_LOCK:
        copies = _COPIES.setdefault(vm.module, {})
        cached = copies.get(layers)
        if cached is None or cached[0] != state:
            folded = fold_for_inference(vm.module, layers)
            if folded is not None and not _same_outputs(
                _recorded_run(folded, vm.module, layers, x[:1]),
                _recorded_run(vm.module, vm.module, layers, x[:1]),
            ):
                warnings.warn(
                    f"the folded forward-only copy of {vm.name} computes something else than the model; "
                    "deepscope runs the model as it is (please report this model)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                folded = None
            copies.pop(layers, None)
            while len(copies) >= MAX_INFERENCE_COPIES:
                del copies[next(iter(copies))]  # the least recently made
            copies[layers] = (state, folded if folded is not None else vm.module)
        return copies[layers][1]


def _inference_state(module: nn.Module) -> tuple | None:
    """What a forward-only copy depends on: every submodule (its identity, type and settings, so that a module
    swapped for another or a changed stride is seen) and the identity and version of every parameter and buffer.
    None where no copy may stand in for the module: a submodule in train mode (batch statistics, dropout) or a
    forward hook anywhere (it must see the module's own calls)."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return None
    structure = []
    for sub in module.modules():
        if sub.training or sub._forward_hooks or sub._forward_pre_hooks:
            return None
        structure.append((id(sub), type(sub), module_settings(sub)))
    tensors = [*module.parameters(), *module.buffers()]
    return (*structure, *((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in tensors))


_PLAIN = (bool, int, float, str, type(None))


def module_settings(module: nn.Module) -> tuple:
    """A module's own settings, what its computation depends on besides parameters, buffers and submodules:
    plain attributes (kernel size, stride, padding, eps, inplace, a custom scale factor...) and function
    attributes (``self.act = torch.tanh``, as the function itself). The train/eval flag is not one of them."""
    settings = []
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if (
            isinstance(value, _PLAIN)
            or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value))
            or (callable(value) and not isinstance(value, (nn.Module, torch.Tensor)))
        ):
            settings.append((key, value))
    return tuple(settings)


@contextmanager
def _recording(
    model: nn.Module, module: nn.Module, layers: Sequence[str], record: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Inside the block, ``module`` (the model, or a copy of it with taps) hands ``layers`` to ``record``."""
    if module is model or not layers:
        with layer_hooks(model, layers, record):
            yield
        return
    with module.get_submodule(TAPS).recording(record):
        yield


def _recorded_run(module: nn.Module, model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> tuple:
    """(output, every tensor each layer recorded, copied when recorded) of ``module``, the model or its copy."""
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with _recording(model, module, layers, lambda name, tensor: recorded[name].append(tensor.clone())):
        output = module(x)
    return output, recorded


def _same_outputs(folded: object, original: object) -> bool:
    """The folded copy's output and recorded tensors match the model's within float rounding: the same nesting
    of tuples, lists and dicts (named tuples and dict subclasses included), tensors of the same shapes, every
    float tensor within 1e-3 of its largest value, other tensors equal, other leaves of the same type."""
    if isinstance(original, torch.Tensor):
        if not isinstance(folded, torch.Tensor) or folded.shape != original.shape:
            return False
        if not original.is_floating_point():
            return torch.equal(folded, original)
        scale = float(original.abs().max()) if original.numel() else 0.0
        return torch.allclose(folded, original, rtol=1e-3, atol=1e-3 * scale + 1e-6)
    if isinstance(original, (tuple, list)):
        return (
            type(folded) is type(original)
            and len(folded) == len(original)
            and all(_same_outputs(a, b) for a, b in zip(folded, original, strict=True))
        )
    if isinstance(original, dict):
        return (
            type(folded) is type(original)
            and list(folded) == list(original)
            and all(_same_outputs(folded[key], original[key]) for key in original)
        )
    return type(folded) is type(original)
