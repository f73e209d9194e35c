"""Counter-based random numbers keyed by (seed, epoch, sample, stream).

Every random draw in the pipeline is a pure function of its key, never of a
generator's state. Augmentation parameters therefore do not depend on batch
size, worker count, process count, sample order or where a run was resumed.

    u = mix64(mix64(mix64(mix64(seed) ^ epoch) ^ sample) ^ stream) ^ draw  ->  [0, 1)

`mix64` is the splitmix64 finaliser (a bijection on 64-bit integers with full
avalanche), applied in numpy uint64 arithmetic, vectorised over samples.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _key(seed: int, epoch: int, samples: np.ndarray, stream: int) -> np.ndarray:
    k = mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    k = mix64(k ^ np.uint64(epoch))
    k = mix64(k ^ np.asarray(samples, dtype=np.int64).astype(np.uint64))
    return mix64(k ^ np.uint64(stream))


def uniform(seed: int, epoch: int, samples: np.ndarray, stream: int, n: int = 1) -> np.ndarray:
    """float64 [N, n] uniform in [0, 1): draw j of `stream` for each sample id."""
    key = _key(seed, epoch, np.atleast_1d(samples), stream)  # [N]
    bits = mix64(key[:, None] ^ np.arange(n, dtype=np.uint64)[None, :])  # [N, n]
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def randint(seed: int, epoch: int, samples: np.ndarray, stream: int, high: np.ndarray | int, n: int = 1) -> np.ndarray:
    """int64 [N, n] uniform in [0, high) (high broadcast per sample)."""
    high = np.asarray(high, dtype=np.int64)
    if high.ndim == 1:
        high = high[:, None]
    u = uniform(seed, epoch, samples, stream, n)
    return np.minimum((u * high).astype(np.int64), high - 1)


def stream_id(name: str) -> int:
    """Stable 32-bit stream id for a named draw (e.g. "rrc/box"), independent of Python's hash seed."""
    h = np.uint64(1469598103934665603)
    with np.errstate(over="ignore"):
        for b in name.encode():
            h = (h ^ np.uint64(b)) * np.uint64(1099511628211)
    return int(h & np.uint64(0xFFFFFFFF))
