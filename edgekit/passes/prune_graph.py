"""Where Torch-Pruning 1.6's dependency graph is wrong for fusion models, and the corrections.

- nn.LSTM: its pruner indexes the gate rows wrongly (LSTMHiddenPruner keeps the same units in all four gates).
- torch.cat, which joins branch features in fusion heads (ConcatRecorder):
  * it builds its graph from autograd, so an input that needs no grad (a model input such as the modality
    mask, concatenated to the branch features) is invisible, and every offset after it is wrong;
  * it disables offset mapping whenever a 3-D parameter lies upstream (a ViT class-token heuristic that a
    text positional table trips), and maps offsets only for a concat on dim 1, so features concatenated on
    the last axis of [B, N, C] tokens were pruned at the same indices in every branch, while a concat of
    [B, C, L] sequences on dim 1 was left unmapped by our own earlier rule.
  Each concat's feature axis is found from the layers that produce (or consume) its inputs, following
  transposes on the way; offsets are mapped exactly when the concat runs along that axis.
- Free parameters (positional tables, learned tokens, gates) are passed as "unwrapped" parameters pruned on
  their last axis; 1-D ones (per-modality weights, scalars) are never pruned.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.errors import EdgekitError

_FEATURES_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.LSTM, nn.GRU, nn.MultiheadAttention)
_FEATURES_FIRST = (nn.Conv1d, nn.BatchNorm1d, nn.GroupNorm, nn.InstanceNorm1d, nn.ConvTranspose1d)


def free_parameters(model: nn.Module) -> tuple[list, list]:
    """(prunable, fixed) lists of (name, parameter) not owned by a standard layer: 2+ dims are pruned along
    their last (feature) axis, 1-D ones are left alone."""
    owned = set()
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
                          nn.Embedding, nn.LSTM, nn.GroupNorm, nn.PReLU, nn.MultiheadAttention)):
            owned.update(id(p) for p in m.parameters())
    free = [(n, p) for n, p in model.named_parameters() if id(p) not in owned]
    return [(n, p) for n, p in free if p.dim() >= 2], [(n, p) for n, p in free if p.dim() < 2]


def lstm_pruner(tp):
    """Keeps the same hidden units in all four gates (rows of weight_ih/weight_hh/biases) and in weight_hh's columns."""

    class LSTMHiddenPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = nn.LSTM

        def check(self, layer, idxs, to_output):
            if layer.num_layers != 1 or layer.bidirectional or layer.proj_size:
                raise EdgekitError("only single-layer, unidirectional nn.LSTM can be pruned", "add the LSTM to prune: {ignore: [...]}")

        def prune_out_channels(self, layer, idxs):
            keep = torch.tensor(sorted(set(range(layer.hidden_size)) - set(idxs)))
            rows = torch.cat([keep + g * layer.hidden_size for g in range(4)])
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                if hasattr(layer, name):
                    setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), rows.tolist(), 0))
            layer.weight_hh_l0 = self._prune_parameter_and_grad(layer.weight_hh_l0, keep.tolist(), 1)
            layer.hidden_size = len(keep)
            layer._init_flat_weights()
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.input_size)) - set(idxs))
            layer.weight_ih_l0 = self._prune_parameter_and_grad(layer.weight_ih_l0, keep, 1)
            layer.input_size = len(keep)
            layer._init_flat_weights()
            return layer

        def get_out_channels(self, layer):
            return layer.hidden_size

        def get_in_channels(self, layer):
            return layer.input_size

    return LSTMHiddenPruner()


class ConcatRecorder:
    """Records each traced torch.cat (axis, rank, grad-ness and width of every input); `fix` then corrects
    the graph's concat nodes (see the module doc)."""

    def __init__(self):
        self.calls = {}

    def forward_fn(self, model, inputs):
        from torch.overrides import TorchFunctionMode

        calls = self.calls

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func in (torch.cat, torch.concat, torch.concatenate) and isinstance(out, torch.Tensor) and out.grad_fn is not None:
                    tensors = args[0] if args else kwargs["tensors"]
                    dim = (args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)) % out.dim()
                    calls[out.grad_fn] = (dim, out.dim(), [(t.requires_grad, t.shape[dim]) for t in tensors])
                return out

        with Mode():
            return model(**inputs)

    def fix(self, tp, dg) -> None:
        dg.register_customized_layer(FixedWidth, _fixed_width_pruner(tp))
        for node in list(dg.module2node.values()):
            if node.type != tp.ops.OPTYPE.CONCAT or node.grad_fn not in self.calls:
                continue
            dim, ndim, inputs = self.calls[node.grad_fn]
            node.enable_index_mapping = dim == feature_axis(node, ndim)
            if not node.enable_index_mapping:  # a concat of tokens/time steps: every input shares the feature indices
                _drop_offsets(tp, node)  # tp may have mapped offsets already while it built the graph
                continue
            if dim != 1:  # tp maps offsets only for dim 1; the axis is checked above, so let it map this one
                node.grad_fn = _FeatureAxisCat(node.grad_fn)
            if len(node.inputs) != sum(g for g, _ in inputs):
                continue
            traced, merged = iter(node.inputs), []
            for needs_grad, width in inputs:
                if needs_grad:
                    merged.append(next(traced))
                else:  # an input autograd does not see: a node of fixed width keeps the offsets after it right
                    fixed = tp.dependency.Node(FixedWidth(width), grad_fn=None, name=f"fixed input ({width})")
                    fixed.type = tp.ops.OPTYPE.CUSTOMIZED
                    fixed.add_output(node)
                    dg.module2node[fixed.module] = fixed
                    merged.append(fixed)
            node.inputs = merged
            node.module.concat_sizes = [w for _, w in inputs]  # the traced widths, exact even past unknown ops


def _drop_offsets(tp, node) -> None:
    none = tp.dependency.constants.INDEX_MAPPING_PLACEHOLDER
    for dep in node.dependencies:
        if dep.target in node.inputs:
            dep.index_mapping[1] = none
    for source in node.inputs:
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[1] = none


class _FeatureAxisCat:
    """A concat's grad_fn as tp's offset mapping sees it: on the feature axis (tp only accepts dim 1)."""
    _saved_dim = 1

    def __init__(self, grad_fn):
        self._grad_fn = grad_fn

    def __getattr__(self, name):
        return getattr(self._grad_fn, name)


def feature_axis(concat_node, ndim: int) -> int:
    """The feature (channel) axis of a concat's inputs: 1 for [B, C] and [B, C, H, W]; for rank 3 the axis of
    the nearest layer that produces (else consumes) them — last for Linear/LayerNorm/Embedding ([B, N, C]),
    1 for Conv1d/BatchNorm1d ([B, C, L]) — carried through transposes/permutes; last when none is found."""
    if ndim != 3:
        return 1
    for start, direction in ((concat_node.inputs, "inputs"), (concat_node.outputs, "outputs")):
        for first in start:
            axis = _layer_axis(first, direction, ndim)
            if axis is not None:
                return axis
    return ndim - 1


def _layer_axis(node, direction: str, ndim: int, depth: int = 0):
    """Walk `direction` from node to the first layer; return its feature axis as seen at the concat."""
    m = node.module
    if isinstance(m, _FEATURES_LAST):
        return ndim - 1
    if isinstance(m, _FEATURES_FIRST):
        return 1
    name = node.grad_fn.name() if node.grad_fn is not None and hasattr(node.grad_fn, "name") else ""
    if depth > 40 or "View" in name or "Reshape" in name or "Unsafe" in name:
        return None  # a reshape may move the feature axis anywhere
    for nxt in getattr(node, direction):
        axis = _layer_axis(nxt, direction, ndim, depth + 1)
        if axis is None:
            continue
        if "Transpose" in name:  # the op sits between the layer and the concat: apply its permutation
            d0, d1 = node.grad_fn._saved_dim0 % ndim, node.grad_fn._saved_dim1 % ndim
            axis = {d0: d1, d1: d0}.get(axis, axis)
        elif "Permute" in name:
            dims = [d % ndim for d in node.grad_fn._saved_dims]
            axis = dims.index(axis) if direction == "inputs" else dims[axis]
        return axis
    return None


class FixedWidth(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.width = width


def _fixed_width_pruner(tp):
    class FixedWidthPruner(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.width

        get_in_channels = get_out_channels

    return FixedWidthPruner()
