"""Size of a model: parameters and multiply-accumulates, counted once here for every stage (training records,
pruning records, the report), so a MAC means the same thing everywhere."""
from __future__ import annotations

import torch
from torch import nn

QUANTIZER_PREFIX = "__nncf_hooks"  # an INT8 model's fake-quant modules: not part of the network's size


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(QUANTIZER_PREFIX))


def flops_by_module(model: nn.Module, inputs: dict) -> dict[str, dict]:
    """FLOPs of one forward pass on `inputs` (the whole batch) per module path ("Global" = the whole model),
    counted from the aten ops torch actually runs, so attention matmuls and pruned shapes count as they are
    (not from a layer table). Eval mode, no grad; the model's training flag is restored."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    # nn.TransformerEncoder(Layer)'s fused no-grad fast path runs kernels the counter does not see (0 MACs)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(**inputs)
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return fc.get_flop_counts()


def count_macs(model: nn.Module, inputs: dict) -> int:
    """Multiply-accumulates of one forward pass over the whole batch in `inputs`."""
    return sum(flops_by_module(model, inputs).get("Global", {}).values()) // 2


def model_stats(model: nn.Module, inputs: dict) -> dict:
    """Params and MACs per sample of the whole model and of each top-level child (its branches); INT8
    quantizer modules are left out."""
    flops = flops_by_module(model, inputs)
    batch = next(iter(inputs.values())).shape[0]
    root = next((k for k in flops if k != "Global" and "." not in k), None)
    branches = {}
    for name, child in model.named_children():
        if name.startswith(QUANTIZER_PREFIX):
            continue
        key = f"{root}.{name}" if root else name
        branches[name] = {"params": sum(p.numel() for p in child.parameters()),
                          "macs": sum(flops.get(key, {}).values()) // 2 // batch}
    return {"params": count_params(model), "macs": sum(flops.get("Global", {}).values()) // 2 // batch, "branches": branches}
