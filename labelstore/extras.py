"""Optional dependencies, installed as the package's extras (pyproject.toml):

    pip install labelstore              image classification (ImageFolder, HDF5), the store, every student
    pip install 'labelstore[video]'     + PyAV: the video tasks (retrieval, videoqa) and their video files
    pip install 'labelstore[s3]'        + s3fs: stores at s3:// URLs
    pip install 'labelstore[hf]'        + transformers: hf: model specs
    pip install 'labelstore[dev]'       everything above + the test tools

`require(module, feature)` imports an optional module or raises ConfigError naming the extra:
`video data needs PyAV: pip install 'labelstore[video]'`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError

# module -> (distribution as users know it, extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "av": ("PyAV", "video"),
    "s3fs": ("s3fs", "s3"),
    "transformers": ("transformers", "hf"),
}


class MissingExtra(ConfigError):
    """A feature needs an optional dependency that is not installed (the message names the extra)."""


def require(module: str, feature: str) -> ModuleType:
    """import `module`, or MissingExtra: '<feature> needs <package>: pip install 'labelstore[<extra>]''."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist, extra = EXTRAS[module]
        raise MissingExtra(f"{feature} needs {dist}: pip install 'labelstore[{extra}]' ({e})") from None
