"""One static arena for every activation and scratch buffer, offsets planned from liveness.

Greedy by size, as TensorFlow Lite Micro's GreedyMemoryPlanner: the largest buffer first, each at the lowest
4-byte-aligned offset that overlaps no placed buffer alive at the same time. Buffers the caller owns (the
input and the logits) take no arena space.
"""

from deepshrink.mcu.program import Buffer

ALIGN = 4


def _overlap_in_time(a: Buffer, b: Buffer) -> bool:
    return a.first <= b.last and b.first <= a.last


def plan(buffers: dict[str, Buffer]) -> int:
    """Set each arena buffer's offset; return the arena's size in bytes."""
    placed: list[Buffer] = []
    for buf in sorted((b for b in buffers.values() if not b.external), key=lambda b: (-b.size, b.first, b.name)):
        busy = sorted((p.offset, p.offset + p.size) for p in placed if _overlap_in_time(p, buf))
        offset = 0
        for start, end in busy:
            if offset + buf.size <= start:
                break
            offset = max(offset, -(-end // ALIGN) * ALIGN)
        buf.offset = offset
        placed.append(buf)
    return max((p.offset + p.size for p in placed), default=0)
