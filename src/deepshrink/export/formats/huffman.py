"""Huffman coding of small-alphabet symbol streams (codebook indices, relative-index gaps) with the
`constriction` library's Huffman trees.

A code is described by its code lengths, one u8 per symbol of the alphabet (0 = the symbol never
occurs), as DEFLATE does: cheaper to store than counts. Both sides rebuild the tree from the dyadic
probabilities 2^-length of the occurring symbols; Huffman's algorithm on a dyadic distribution gives
back exactly those lengths (any other code would beat the entropy), so encoder and decoder agree and
the stream costs what the counts' tree would. Bits are written LSB-first into u32 words, so the
little-endian bytes trimmed to whole bytes hold the stream.
"""

import math

import constriction
import numpy as np

# constriction is a compiled extension whose submodules are attributes, not importable modules.
QueueEncoder, QueueDecoder = constriction.symbol.QueueEncoder, constriction.symbol.QueueDecoder
EncoderHuffmanTree = constriction.symbol.huffman.EncoderHuffmanTree
DecoderHuffmanTree = constriction.symbol.huffman.DecoderHuffmanTree
MAX_LENGTH = 60  # 2^-60 is still exact in float64; real codes of <= 2^31 symbols stay far below


def code_lengths(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """u8 Huffman code length of each symbol 0..alphabet-1 for these symbols (0 = absent)."""
    counts = np.bincount(symbols.astype(np.int64), minlength=alphabet)[:alphabet]
    present = np.flatnonzero(counts)
    lengths = np.zeros(alphabet, np.uint8)
    if len(present) < 2:  # one symbol (or none) costs no bits: the count says it all
        return lengths if not len(present) else _one(lengths, int(present[0]))
    tree = EncoderHuffmanTree(counts[present].astype(np.float64))
    for rank, sym in enumerate(present.tolist()):
        enc = QueueEncoder()
        enc.encode_symbol(rank, tree)
        lengths[sym] = enc.get_compressed()[1]
    return lengths


def _one(lengths: np.ndarray, sym: int) -> np.ndarray:
    lengths[sym] = 1  # marks the only symbol present; `_tree` gives it a zero-bit code
    return lengths


def _tree(lengths: np.ndarray, kind: type) -> object:
    """The Huffman tree over the present symbols (two or more: the library panics on none)."""
    present = lengths[lengths > 0]
    if np.any(present > MAX_LENGTH):
        raise ValueError(f"Huffman code length over {MAX_LENGTH}")
    return kind(np.exp2(-present.astype(np.float64)))


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """The Huffman bit stream of `symbols` under the code `lengths` (every symbol must be present)."""
    present = np.flatnonzero(lengths)
    if len(present) < 2:
        return b""
    tree = _tree(lengths, EncoderHuffmanTree)
    rank = np.full(len(lengths), -1, np.int64)
    rank[present] = np.arange(len(present))
    enc = QueueEncoder()
    for r in rank[symbols.astype(np.int64)].tolist():
        enc.encode_symbol(r, tree)
    words, bits = enc.get_compressed()
    return np.asarray(words, "<u4").tobytes()[: math.ceil(bits / 8)]


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """`count` symbols (int64) from a stream written by `encode`."""
    present = np.flatnonzero(lengths)
    if count and not len(present):
        raise ValueError("symbols to decode but an empty code")
    if len(present) < 2:
        return np.full(count, present[0] if len(present) else 0, np.int64)
    if count > 8 * len(data):  # every symbol of a code of two or more costs at least one bit
        raise ValueError(f"{count} symbols cannot fit in {len(data)} bytes")
    tree = _tree(lengths, DecoderHuffmanTree)
    dec = QueueDecoder(np.frombuffer(data + b"\0" * (-len(data) % 4), "<u4").astype(np.uint32))
    ranks = np.fromiter((dec.decode_symbol(tree) for _ in range(count)), np.int64, count)
    return present[ranks]


def coded_bits(symbols: np.ndarray, lengths: np.ndarray) -> int:
    """Bits `encode` writes for these symbols under `lengths` (no encoding done)."""
    if np.count_nonzero(lengths) < 2:
        return 0
    return int(lengths.astype(np.int64)[symbols.astype(np.int64)].sum())
