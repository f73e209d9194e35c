"""labelstore: teacher labels recorded once per dataset in a chunked Zarr v3 store.

    store = labelstore.open("labels.zarr")
    rec = store.read(epoch=0, indices=[0, 5, 9])   # dict of numpy arrays
    arrays = store.to_dask(); ds = store.to_xarray()
"""

import logging
import os
import sys

# Idle OpenMP threads (torch's intra-op pool) sleep instead of spinning: in the teacher stage they
# share the cores with the decode/render threads, and a spinning thread burns the core another
# thread needs (the stage on 2 cores spent 1.6-1.9 ms of CPU per 224-px view, 1.0-1.2 on one core;
# docs/benchmarks.md). OpenMP reads this when torch is loaded: it has no effect once torch was
# imported before labelstore, and a value set by the user is kept. _OMP_PASSIVE: whether idle
# OpenMP threads sleep in this process (pipeline/stage.py:teacher_threads splits the cores otherwise).
_torch_loaded = "torch" in sys.modules
_omp_read = os.environ.get("OMP_WAIT_POLICY", "")  # what torch's OpenMP read at its load, if it has loaded
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_OMP_PASSIVE = (_omp_read if _torch_loaded else os.environ["OMP_WAIT_POLICY"]).upper() == "PASSIVE"

from .errors import ConfigError, DataError, LabelstoreError, StoreError, StoreMismatch, TeacherOutputError
from .reader import LabelStore, open
from .schema import FORMAT_VERSION

# diagnostics go through the "labelstore" logger (library convention: silent unless the application
# configures logging; the CLI does, from $LABELSTORE_LOG, default WARNING)
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["open", "LabelStore", "LabelstoreError", "StoreError", "StoreMismatch", "DataError", "ConfigError",
           "TeacherOutputError", "FORMAT_VERSION", "__version__"]
