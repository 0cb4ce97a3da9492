"""Node algebra of a full-domain generalisation lattice (no SQL, no data).

A node is a tuple giving each quasi-identifier the index of its level (0 = finest); `top` is the node of
coarsest levels. Its height is the sum of the indices; its predecessors are the nodes one step finer in one
column, its successors one step coarser.
"""

from __future__ import annotations

import itertools

Node = tuple[int, ...]


def height(node: Node) -> int:
    return sum(node)


def nodes(top: Node) -> list[Node]:
    """Every node of the lattice, lowest first."""
    return sorted(itertools.product(*(range(h + 1) for h in top)), key=lambda n: (height(n), n))


def layer(top: Node, h: int) -> list[Node]:
    return [n for n in nodes(top) if height(n) == h]


def predecessors(node: Node) -> list[Node]:
    return [(*node[:i], level - 1, *node[i + 1 :]) for i, level in enumerate(node) if level > 0]


