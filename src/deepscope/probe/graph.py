"""Architecture graph: the model's tensor dataflow as nodes and edges, with output shapes and parameter counts.

torch.fx traces the model symbolically; where that fails (data-dependent control flow), a dynamic tracer runs
the model once on the example and records each leaf module call and each torch function applied outside leaf
modules (a ``TorchFunctionMode``), linking them by tensor identity. The result says which tracer made it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode

from deepscope.errors import GraphError, ImageError, LayerNotFoundError, SettingError, suggestion
from deepscope.probe.hooks import hooks
from deepscope.probe.inference import OwnThreadTracer
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Node:
    """One operation. ``module`` is the dotted path of the module this node is a call of (None for
    functions); ``scope`` is the module it runs inside; ``attrs`` holds window geometry for conv/pool/pad.

    ``layer`` is the layer name (see :mod:`deepscope.probe.layers`) whose output this node's output is, the name
    every ``layer=`` argument takes: a module call's path (``'PATH@N'`` for the N-th call of a module that runs
    more than once), or for a function the module whose output it is (``F.conv2d`` inside a convolution module
    of its own). None for a function whose output no module hands on (a residual addition inside a block). The
    node's ``id`` is its layer name where it has one.
    """

    id: str
    op: str
    module: str | None
    output_shape: tuple[int, ...] | None
    params: int
    scope: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None


@dataclass
class Graph:
    """Nodes in topological order and edges ``(src_id, dst_id)``.

    ``tracer`` is 'fx' or 'dynamic'; ``notes`` say why the fallback was used and what that means.
    """

    nodes: list[Node]
    edges: list[tuple[str, str]]
    tracer: str
    notes: list[str] = field(default_factory=list)
    depth: int | None = None

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise LayerNotFoundError(
            f"no node {node_id!r} in the graph.{suggestion(node_id, [n.id for n in self.nodes])}"
        )

    def inputs_of(self, node_id: str) -> list[str]:
        return [src for src, dst in self.edges if dst == node_id]

    def outputs_of(self, node_id: str) -> list[str]:
        return [dst for src, dst in self.edges if src == node_id]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"nodes": [...], "edges": [[src, dst], ...], "tracer", "notes", "depth"}``."""
        nodes = []
        for node in self.nodes:
            entry = asdict(node)
            entry["output_shape"] = list(node.output_shape) if node.output_shape is not None else None
            nodes.append(entry)
        return {
            "nodes": nodes,
            "edges": [list(edge) for edge in self.edges],
            "tracer": self.tracer,
            "notes": list(self.notes),
            "depth": self.depth,
        }

    def summary(self) -> str:
        """A text table: one line per node (its id, the layer name where it has one) with its op, output shape,
        parameters and inputs."""
        lines = [f"{'node':32s} {'op':26s} {'output shape':20s} {'params':>11s}  inputs"]
        for node in self.nodes:
            shape = "x".join(map(str, node.output_shape)) if node.output_shape else "-"
            inputs = ", ".join(self.inputs_of(node.id))
            lines.append(f"{node.id[:32]:32s} {node.op[:26]:26s} {shape:20s} {node.params:11,d}  {inputs}")
        lines.append(f"{len(self.nodes)} nodes, {len(self.edges)} edges, traced by {self.tracer}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def graph(
    model: VisionModel | nn.Module,
    example: torch.Tensor | None = None,
    depth: int | None = None,
) -> Graph:
    """Extract the architecture graph of ``model`` run on ``example`` (a batch; default: zeros of the model's
    input size). ``depth`` collapses every module deeper than that many dotted levels into one node.

    Skip connections show up as two-input nodes (``op == 'add'``). The model is left as found: the example runs
    under ``torch.no_grad()`` with every module in eval mode, restored afterwards.

    >>> import torch, deepscope as ds
    >>> g = ds.graph(ds.load_model("zoo:lenet_mnist"))
    >>> [n.op for n in g.nodes][:3], g.node("conv1").output_shape
    (['input', 'Conv2d', 'ReLU'], (1, 6, 28, 28))
    """
    vm = as_vision_model(model)
    example = _example_input(vm, example)
    notes: list[str] = []
    with torch.no_grad(), evaluation_mode(vm.module):
        try:
            full = _trace_fx(vm.module, example)
        except Exception as error:  # fx raises many error types for untraceable Python
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            notes.append(
                f"torch.fx could not trace {vm.name} ({type(error).__name__}: {message}); the graph was recorded "
                "by running the model once on the example, so branches the example did not take are missing"
            )
            full = _trace_dynamic(vm.module, example)
            full.notes = notes
    if depth is not None:
        if depth < 1:
            raise SettingError(f"depth must be >= 1 (levels of dotted module names), got {depth}")
        return _collapse(full, vm.module, depth)
    return full


def _example_input(vm: VisionModel, example: torch.Tensor | None) -> torch.Tensor:
    if example is not None:
        if not isinstance(example, torch.Tensor):
            raise ImageError(f"example must be a tensor batch, got {type(example).__name__}")
        return example.to(vm.device)
    if vm.input_size is None:
        raise SettingError(f"{vm.name} has no known input size; pass an example tensor")
    return torch.zeros(1, vm.preprocessing.channels, *vm.input_size, device=vm.device)


# ----------------------------------------------------------------------------------------------------------
# op names and window geometry, shared by both tracers


_ARITHMETIC = {"add", "sub", "mul", "truediv", "floordiv", "matmul", "pow", "mod", "and", "or", "xor"}


def op_name(target: Any) -> str:
    """A readable, normalized op name: operator.iadd, torch.add, Tensor.add_, Tensor.__radd__ -> 'add'."""
    name = target if isinstance(target, str) else getattr(target, "__name__", None) or type(target).__name__
    name = name.strip("_") or name
    if name[:1] in ("i", "r") and name[1:] in _ARITHMETIC:
        name = name[1:]
    return name


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return values if len(values) == 2 else (values[0], values[0])


def module_geometry(module: nn.Module) -> dict[str, Any]:
    """Window geometry of a conv / pool / pad module (empty for other modules)."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(module.kernel_size)
        dilation = _pair(getattr(module, "dilation", 1))
        padding = module.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
        return {
            "kind": "window",
            "kernel_size": kernel,
            "stride": _pair(module.stride if module.stride is not None else module.kernel_size),
            "padding": _pair(padding),
            "dilation": dilation,
        }
    if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
        left, right, top, bottom = module.padding
        return {"kind": "pad", "pad": (left, right, top, bottom)}
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return {"kind": "adaptive", "output_size": module.output_size}
    if isinstance(module, (nn.Upsample, nn.ConvTranspose2d, nn.PixelShuffle, nn.Unfold, nn.Fold)):
        return {"kind": "unsupported"}
    return {}


_WINDOW_FUNCTIONS = {"conv2d": 1, "max_pool2d": 0, "avg_pool2d": 0}
_UNSUPPORTED_FUNCTIONS = {
    "interpolate",
    "upsample",
    "conv_transpose2d",
    "pixel_shuffle",
    "roll",
    "flip",
    "unfold",
}


def function_geometry(name: str, args: tuple, kwargs: dict, shape_of: Callable[[Any], Any]) -> dict[str, Any]:
    """Window geometry of a functional conv / pool / pad call, from its arguments."""
    if name in _WINDOW_FUNCTIONS:
        names = (
            ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
            if name == "conv2d"
            else [
                "input",
                "kernel_size",
                "stride",
                "padding",
                "dilation" if name == "max_pool2d" else "ceil_mode",
            ]
        )
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        kernel = _pair(shape_of(bound["weight"])[-2:]) if name == "conv2d" else _pair(bound["kernel_size"])
        stride = bound.get("stride") or (1 if name == "conv2d" else kernel)
        padding = bound.get("padding", 0)
        dilation = bound.get("dilation", 1) if name != "avg_pool2d" else 1
        if padding == "valid":
            padding = 0
        if padding == "same":
            padding = tuple(_pair(dilation)[i] * (kernel[i] - 1) // 2 for i in range(2))
        return {
            "kind": "window",
            "kernel_size": kernel,
            "stride": _pair(stride),
            "padding": _pair(padding),
            "dilation": _pair(dilation),
        }
    if name == "pad":
        pad = list(args[1] if len(args) > 1 else kwargs["pad"])
        pad = ([*pad, 0, 0, 0, 0])[:4]
        return {"kind": "pad", "pad": tuple(int(p) for p in pad)}
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        return {"kind": "adaptive", "output_size": args[1] if len(args) > 1 else kwargs["output_size"]}
    if name in _UNSUPPORTED_FUNCTIONS:
        return {"kind": "unsupported"}
    return {}


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def is_leaf(module: nn.Module) -> bool:
    """torch.fx's default: built-in torch.nn modules are leaves (containers are not); user modules are traced
    through."""
    return module.__module__.startswith("torch.nn") and not isinstance(module, CONTAINERS)


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return None


# ----------------------------------------------------------------------------------------------------------
# torch.fx


def _trace_fx(root: nn.Module, example: torch.Tensor) -> Graph:
    traced = torch.fx.GraphModule(root, OwnThreadTracer().trace(root), type(root).__name__)
    ShapeProp(traced).propagate(example)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphError(f"expected a model with one input, found {len(placeholders)}")

    def meta_shape(fx_node: torch.fx.Node) -> tuple[int, ...] | None:
        meta = fx_node.meta.get("tensor_meta")
        if meta is None:
            return None
        if hasattr(meta, "shape"):
            return tuple(meta.shape)
        for item in meta if isinstance(meta, (tuple, list)) else ():
            if hasattr(item, "shape"):
                return tuple(item.shape)
        return None

    def is_tensor(fx_node: torch.fx.Node) -> bool:
        return hasattr(fx_node.meta.get("tensor_meta"), "shape")

    def holds_tensors(fx_node: torch.fx.Node) -> bool:
        meta = fx_node.meta.get("tensor_meta")
        return isinstance(meta, (tuple, list)) and any(hasattr(item, "shape") for item in meta)

    kept: dict[torch.fx.Node, Node] = {}
    # The nearest kept nodes feeding each fx node (dropped nodes pass their sources through).
    sources: dict[torch.fx.Node, list[str]] = {}
    nodes: list[Node] = []
    edges: list[tuple[str, str]] = []
    for fx_node in traced.graph.nodes:
        feeding: list[str] = []
        for arg in fx_node.all_input_nodes:
            for source in sources.get(arg, []):
                if source not in feeding:
                    feeding.append(source)
        scope = _fx_scope(fx_node)
        if fx_node.op == "placeholder":
            node = Node("input", "input", None, meta_shape(fx_node), 0)
        elif fx_node.op == "output":
            node = Node("output", "output", None, meta_shape(fx_node), 0)
        elif not feeding:
            sources[fx_node] = []  # constants and parameters: not part of the dataflow from the input
            continue
        elif fx_node.op == "call_module":
            module = root.get_submodule(fx_node.target)
            node = Node(
                fx_node.name,
                type(module).__name__,
                fx_node.target,
                meta_shape(fx_node),
                _parameter_count(module),
                scope,
                module_geometry(module),
            )
        elif fx_node.op in ("call_function", "call_method"):
            container = fx_node.args[0] if fx_node.args else None
            passthrough = (
                fx_node.target is operator.getitem
                and isinstance(container, torch.fx.Node)
                and not is_tensor(container)
            )
            if passthrough or holds_tensors(fx_node):
                sources[fx_node] = feeding  # a tuple of tensors: its getitem consumers link to the sources
                continue
            if not is_tensor(fx_node):
                sources[fx_node] = []  # shape arithmetic (x.size(0)) is not dataflow
                continue
            name = op_name(fx_node.target)

            def shape_of(value: Any) -> Any:
                return meta_shape(value) if isinstance(value, torch.fx.Node) else getattr(value, "shape", ())

            attrs = function_geometry(name, fx_node.args, fx_node.kwargs, shape_of)
            weights = sum(
                _numel_if_parameter(_fetch_attr(root, arg.target))
                for arg in fx_node.all_input_nodes
                if arg.op == "get_attr"
            )
            node = Node(fx_node.name, name, None, meta_shape(fx_node), weights, scope, attrs)
        else:  # get_attr that depends on the input cannot happen; keep the flow intact anyway
            sources[fx_node] = feeding
            continue
        kept[fx_node] = node
        sources[fx_node] = [node.id]
        nodes.append(node)
        edges.extend((source, node.id) for source in feeding)
    return _named_by_layer(Graph(nodes, edges, "fx"))


def _fetch_attr(root: nn.Module, target: str) -> Any:
    owner, _, attribute = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, attribute)


def _numel_if_parameter(value: Any) -> int:
    """Parameters a functional op uses directly (F.conv2d(x, self.weight)) count towards its node."""
    return value.numel() if isinstance(value, nn.Parameter) else 0


def _fx_scope(fx_node: torch.fx.Node) -> str:
    """The innermost module call this node runs in, as 'path' or 'path@N' for the N-th call of a reused one."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    keys = list(stack)
    if fx_node.op == "call_module" and keys:
        keys = keys[:-1] if stack[keys[-1]][0] == fx_node.target else keys
    return _scope_key(keys[-1], stack[keys[-1]][0]) if keys else ""


def _scope_key(key: str, path: str) -> str:
    suffix = key[len(path) :] if key.startswith(path) else ""
    return path + suffix


# ----------------------------------------------------------------------------------------------------------
# dynamic tracer (fallback)


class _DynamicTracer(TorchFunctionMode):
    """Records leaf module calls (via hooks) and torch functions applied outside leaf modules."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self.root = root
        self.names = {module: name for name, module in root.named_modules()}
        self.nodes: list[Node] = []
        self.edges: list[tuple[str, str]] = []
        self.producer: dict[int, str] = {}
        self.alive: list[torch.Tensor] = []  # keeps traced tensors alive so that ids stay unique
        self.scopes: list[str] = []
        self.calls: dict[str, int] = {}
        self.leaf_depth = 0
        self.counter: dict[str, int] = {}

    def _new_id(self, base: str) -> str:
        base = base.replace(".", "_") or "node"
        count = self.counter.get(base, 0)
        self.counter[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def _sources(self, values: Iterable[Any]) -> list[str]:
        found: list[str] = []
        for value in values:
            if isinstance(value, torch.Tensor) and id(value) in self.producer:
                source = self.producer[id(value)]
                if source not in found:
                    found.append(source)
            elif isinstance(value, (tuple, list)):
                found.extend(s for s in self._sources(value) if s not in found)
            elif isinstance(value, dict):
                found.extend(s for s in self._sources(value.values()) if s not in found)
        return found

    def _record(self, node: Node, sources: list[str], output: Any) -> None:
        self.nodes.append(node)
        self.edges.extend((source, node.id) for source in sources)
        for tensor in _tensors(output):
            self.producer[id(tensor)] = node.id
            self.alive.append(tensor)

    def add_input(self, example: torch.Tensor) -> None:
        self._record(Node("input", "input", None, tuple(example.shape), 0), [], example)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if self.leaf_depth:
            return output
        sources = self._sources([args, kwargs])
        tensors = _tensors(output)
        if not sources or not tensors:
            return output
        name = op_name(func)
        weights = sum(_numel_if_parameter(value) for value in (*args, *kwargs.values()))
        node = Node(
            self._new_id(name),
            name,
            None,
            tuple(tensors[0].shape),
            weights,
            self.scopes[-1] if self.scopes else "",
            function_geometry(name, args, kwargs, lambda value: getattr(value, "shape", ())),
        )
        self._record(node, sources, output)
        return output

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        path = self.names[module]
        count = self.calls.get(path, 0)
        self.calls[path] = count + 1
        self.scopes.append(path if count == 0 else f"{path}@{count}")
        if is_leaf(module):
            self.leaf_depth += 1

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        scope = self.scopes.pop()
        if not is_leaf(module):
            return
        self.leaf_depth -= 1
        if self.leaf_depth:
            return
        sources = self._sources(args)
        if not sources:
            return
        path = self.names[module]
        tensors = _tensors(output)
        node = Node(
            self._new_id(scope.replace("@", "_")),
            type(module).__name__,
            path,
            tuple(tensors[0].shape) if tensors else None,
            _parameter_count(module),
            self.scopes[-1] if self.scopes else "",
            module_geometry(module),
        )
        self._record(node, sources, output)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _trace_dynamic(root: nn.Module, example: torch.Tensor) -> Graph:
    tracer = _DynamicTracer(root)
    with hooks(root) as hooked:
        for module in root.modules():
            hooked.before(module, tracer.pre_hook)
            hooked.after(module, tracer.post_hook)
        tracer.add_input(example)
        with tracer:
            output = root(example)
    sources = tracer._sources([output])
    tensors = _tensors(output)
    tracer.nodes.append(Node("output", "output", None, tuple(tensors[0].shape) if tensors else None, 0))
    tracer.edges.extend((source, "output") for source in sources)
    # Ops that feed no output (the conditions of Python branches, say) are not part of the architecture.
    useful = {"output"}
    for src, dst in reversed(tracer.edges):
        if dst in useful:
            useful.add(src)
    return _named_by_layer(
        Graph(
            [node for node in tracer.nodes if node.id in useful],
            [(src, dst) for src, dst in tracer.edges if src in useful],
            "dynamic",
        )
    )


# ----------------------------------------------------------------------------------------------------------
# layer names


def _named_by_layer(found: Graph) -> Graph:
    """Give each node its layer name (see :class:`Node`) and, where it has one, that name as its id.

    A module that runs more than once gets ``'PATH@N'`` per call (N from 0, in execution order). A function's
    output is its innermost module's output when it is the only tensor leaving that module: no other node inside
    the module feeds a node outside it.
    """
    calls: dict[str, int] = {}
    for node in found.nodes:
        node.layer = None
        if node.module is not None:
            calls[node.module] = calls.get(node.module, 0) + 1
    seen: dict[str, int] = {}
    for node in found.nodes:
        if node.module is not None:
            index = seen.get(node.module, 0)
            seen[node.module] = index + 1
            node.layer = node.module if calls[node.module] == 1 else f"{node.module}@{index}"
    scopes = {node.id: _scope_path(node) for node in found.nodes}
    leaving: dict[str, list[str]] = {}
    for src, dst in found.edges:
        for scope in _enclosing(scopes[src]):
            if not _inside(scopes[dst], scope) and src not in leaving.setdefault(scope, []):
                leaving[scope].append(src)
    for node in found.nodes:
        scope = scopes[node.id]
        if node.module is None and scope and leaving.get(scope) == [node.id] and _single_call(node.scope):
            node.layer = _call_name(node.scope, calls)
    taken = {node.layer for node in found.nodes if node.layer}
    renamed: dict[str, str] = {}
    for node in found.nodes:
        if node.layer and node.id != node.layer:
            renamed[node.id] = node.layer
        elif node.id in taken and node.layer != node.id:
            renamed[node.id] = f"{node.id}_{node.op}"  # an op id that reads like another node's layer name
    for node in found.nodes:
        node.id = renamed.get(node.id, node.id)
    found.edges = [(renamed.get(src, src), renamed.get(dst, dst)) for src, dst in found.edges]
    return found


def _scope_path(node: Node) -> str:
    """The module path a node runs inside, without the call suffix."""
    return node.scope.partition("@")[0]


def _enclosing(scope: str) -> list[str]:
    """``'a.b.c'`` -> ``['a.b.c', 'a.b', 'a']``."""
    parts = scope.split(".") if scope else []
    return [".".join(parts[:end]) for end in range(len(parts), 0, -1)]


def _inside(scope: str, outer: str) -> bool:
    return scope == outer or scope.startswith(outer + ".")


def _single_call(scope: str) -> bool:
    """The scope is one call of its module: modules run more than once are left unnamed by their functions,
    whose calls cannot be told apart by path alone."""
    return "@" not in scope


def _call_name(scope: str, calls: dict[str, int]) -> str:
    return scope if calls.get(scope, 0) <= 1 else f"{scope}@0"


# ----------------------------------------------------------------------------------------------------------
# collapsing to a depth


def _collapse(full: Graph, root: nn.Module, depth: int) -> Graph:
    def group_of(node: Node) -> str | None:
        path = node.module or node.scope
        if not path:
            return None
        base, _, call = path.partition("@")
        parts = base.split(".")
        if len(parts) < depth or (len(parts) == depth and node.module is not None):
            return None  # a module call at the cut, or a function above it, stays as it is
        prefix = ".".join(parts[:depth])
        return prefix + (f"@{call}" if call and prefix == base else "")

    groups = {node.id: group_of(node) for node in full.nodes}
    renamed = {node_id: group or node_id for node_id, group in groups.items()}
    nodes: list[Node] = []
    seen: set[str] = set()
    for node in full.nodes:
        group = groups[node.id]
        if group is None:
            nodes.append(node)
            continue
        if group in seen:
            continue
        seen.add(group)
        path = group.partition("@")[0]
        module = root.get_submodule(path)
        members = [n for n in full.nodes if groups[n.id] == group]
        leaving = [n for n in members if any(renamed[dst] != group for dst in full.outputs_of(n.id))]
        last = (leaving or members)[-1]
        scope = ".".join(path.split(".")[:-1])
        nodes.append(
            Node(
                group,
                type(module).__name__,
                path,
                last.output_shape,
                _parameter_count(module),
                scope,
            )
        )
    edges: list[tuple[str, str]] = []
    for src, dst in full.edges:
        edge = (renamed[src], renamed[dst])
        if edge[0] != edge[1] and edge not in edges:
            edges.append(edge)
    return _named_by_layer(Graph(nodes, edges, full.tracer, list(full.notes), depth))
