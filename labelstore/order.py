"""Sample orders for reading an epoch: a chunk-aware quasi-random order for epochs too large for memory.

quasi_random_order (as FFCV's QUASI_RANDOM): the store's inner chunks (chunk_rows consecutive
rows each) are shuffled; consecutive runs of `window` chunks of that shuffled list form windows;
the rows of each window are shuffled among themselves; the windows follow each other. A reader
that keeps the last `window` chunks decoded (LabelStore.read does, WINDOW_CHUNKS of them) reads
every chunk exactly once per epoch, with window * chunk_rows rows of records in memory.

What it does to randomness: any two rows are in the same batch only if their chunks are in the
same window, so a batch of B rows holds rows of at most `window` chunks (of window * chunk_rows
neighbouring-in-file rows) instead of rows drawn from the whole epoch; within a window the order
is uniform. Rows of one chunk are consecutive in the sample table (for an image folder: files of
one class, sorted), so a small window gives class-correlated batches; the window should span
several classes' worth of rows (e.g. window * chunk_rows >= 8 x the rows of one class), or the
sample table should be in random order. The order differs per (seed, epoch) and is the same on
every call with the same arguments.
"""

from __future__ import annotations

import numpy as np


def quasi_random_order(rows: np.ndarray, chunk_rows: int, seed: int, epoch: int, window: int = 8) -> np.ndarray:
    """Positions p (int64 [n], a permutation of range(n)) such that rows[p] is the epoch's order:
    chunks of the store rows `rows` shuffled, rows shuffled within windows of `window` chunks (see
    the module docstring)."""
    rows = np.asarray(rows, dtype=np.int64)
    if chunk_rows < 1 or window < 1:
        raise ValueError(f"chunk_rows and window must be >= 1, got {chunk_rows}, {window}")
    g = np.random.default_rng([int(seed), int(epoch), 0x51])
    chunk = rows // chunk_rows  # [n]
    ids, inv = np.unique(chunk, return_inverse=True)
    rank = np.empty(len(ids), np.int64)
    rank[g.permutation(len(ids))] = np.arange(len(ids))  # position of each chunk in the shuffled chunk list
    win = rank[inv] // window  # [n] window of each row
    return np.lexsort((g.random(len(rows)), win)).astype(np.int64)
