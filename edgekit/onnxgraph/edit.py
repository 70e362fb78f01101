"""Small helpers the graph rewrites share: lookups over a GraphProto and the clean-up after an edit."""
from __future__ import annotations


def init_map(graph) -> dict:
    """{initializer name: TensorProto}"""
    return {i.name: i for i in graph.initializer}


def consumers(graph) -> dict:
    """{tensor name: [nodes that read it]}"""
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def drop_value_info(graph, stale) -> None:
    """Forget the recorded types of `stale` tensors after a rewrite changed them (the checker's shape inference
    recomputes them); a stale entry would contradict the new graph."""
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def prune_initializers(graph) -> None:
    """Drop initializers no node or output reads any more (rewrites leave the replaced ones behind)."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
