"""Sample orders for reading an epoch: a block-aware quasi-random order for epochs too large for memory.

quasi_random_order (as FFCV's QUASI_RANDOM): the store's blocks (block_rows consecutive rows each:
its shards, shard_rows rows, the unit zarr reads whole most cheaply) are shuffled; consecutive
runs of `window` blocks of that shuffled list form windows; the rows of each window are shuffled
among themselves; the windows follow each other. A reader that keeps the last `window` blocks
decoded (LabelStore.read does, WINDOW_SHARDS shards per array) reads every block, so every chunk,
exactly once per epoch, with window * block_rows rows of records in memory.

What it does to randomness: two rows can be in the same batch only if their blocks are in the
same window, so a batch holds rows of at most `window` blocks (window * block_rows rows, each
block neighbouring rows of the sample table) instead of rows drawn from the whole epoch; within a
window the order is uniform. Rows of one block are consecutive in the sample table (for an image
folder: files of one class, sorted), so a window should span many classes' worth of rows (e.g.
ImageNet, ~1,281 images per class, 8 shards of 8,192 rows: >= 51 classes per window, drawn from 8
random places of the table), or the sample table should be in random order. The order differs
per (seed, epoch) and is the same on every call with the same arguments.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def quasi_random_order(rows: np.ndarray, block_rows: int, seed: int, epoch: int, window: int = 8) -> np.ndarray:
    """Positions p (int64 [n], a permutation of range(n)) such that rows[p] is the epoch's order:
    blocks of block_rows store rows shuffled, the rows of `rows` shuffled within windows of `window`
    blocks (see the module docstring)."""
    rows = np.asarray(rows, dtype=np.int64)
    if block_rows < 1 or window < 1:
        raise ConfigError(f"block_rows and window must be >= 1, got {block_rows}, {window}")
    g = np.random.default_rng([int(seed), int(epoch), 0x51])
    chunk = rows // block_rows  # [n] block of each row
    ids, inv = np.unique(chunk, return_inverse=True)
    rank = np.empty(len(ids), np.int64)
    rank[g.permutation(len(ids))] = np.arange(len(ids))  # position of each block in the shuffled block list
    win = rank[inv] // window  # [n] window of each row
    return np.lexsort((g.random(len(rows)), win)).astype(np.int64)
