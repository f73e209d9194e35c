"""Image sources: a folder of class sub-folders, an HDF5 array, an in-memory array.

Every source exposes the same small interface:

* ``len(src)``, ``src.ids`` (the sample table: relative file path, or ``"index:i"``),
  ``src.labels`` (int64 [N], -1 = unlabeled), ``src.classes``
* ``src.load(i) -> uint8 [H, W, 3]`` (always RGB; raises :class:`DecodeError` naming the file)
* ``src.src_shape(i) -> (H, W)`` without decoding pixels, ``src.src_shapes(indices) -> int64 [n, 2]``
* ``src.fingerprint()`` (JSON-able, with ``kind``, ``num_samples``, ``digest``) and ``src.describe()``

Also the built-in synthetic "shapes" dataset (10 classes of coloured shapes on textured
backgrounds) used by the examples and tests: :func:`make_shapes_dataset`,
:func:`make_hdf5_dataset`, :func:`generate_shape` (:func:`draw_shape` also gives the shape's box,
:func:`object_boxes` reads a split's boxes).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw
from labelstore.errors import ConfigError, DataError

__all__ = [
    "EXTENSIONS",
    "SHAPE_CLASSES",
    "ArrayImages",
    "DecodeError",
    "HDF5Images",
    "ImageFolder",
    "ImageSource",
    "draw_shape",
    "generate_shape",
    "make_hdf5_dataset",
    "make_shapes_dataset",
    "object_boxes",
    "open_source",
]

EXTENSIONS = (".jpg", ".jpeg", ".png")
_FULL_HASH_LIMIT = 1 << 30  # HDF5 sources below 1 GiB are hashed completely


class DecodeError(DataError):
    """An image could not be read or decoded; the message names the file (or HDF5 row)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"cannot decode image {self.path!r}: {self.reason}")

    def __reduce__(self):  # picklable across worker processes
        return (DecodeError, (self.path, self.reason))


@runtime_checkable
class ImageSource(Protocol):
    ids: list[str]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int: ...
    def load(self, i: int) -> np.ndarray: ...
    def src_shape(self, i: int) -> tuple[int, int]: ...
    def fingerprint(self) -> dict: ...
    def describe(self) -> dict: ...


def _default_classes(labels: np.ndarray) -> list[str]:
    return [str(i) for i in range(int(labels.max()) + 1)] if labels.size and labels.max() >= 0 else []


def _to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> contiguous uint8 [H, W, 3]."""
    if arr.dtype != np.uint8:
        raise DecodeError(what, f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise DecodeError(what, f"expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] pixels, got {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


_JPEG_SUFFIXES = (".jpg", ".jpeg")


def decoders() -> dict[str, str]:
    """The decoders whose pixels an image folder's views are made of (recorded in the store):
    JPEG files with libjpeg-turbo through simplejpeg (accurate integer DCT, smooth upsampling),
    every other file (and CMYK/YCCK JPEGs, whose inverted-Adobe handling is Pillow's) with Pillow."""
    import PIL
    import simplejpeg

    return {"jpeg": f"simplejpeg {simplejpeg.__version__}", "other": f"pillow {PIL.__version__}"}


def decode_file(path, empty=np.empty) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of an image file (see decoders()). Plain os.path and open(), not
    pathlib: what runs here per image holds the GIL that the other decode workers wait for.
    empty(shape, dtype): the array a JPEG is decoded into (the teacher stage's pipeline/recycle.Recycler)."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() in _JPEG_SUFFIXES:
        import simplejpeg

        with open(path, "rb") as f:
            data = f.read()
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace not in ("CMYK", "YCCK"):
                return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False,
                                              buffer=empty((h, w, 3), np.uint8))
        except ValueError:
            pass  # damaged: Pillow names what is wrong (or decodes what libjpeg-turbo refuses)
    with Image.open(path) as im:
        return _pil_rgb(im)


def loader(source, empty):
    """source.load, decoding into empty(shape, dtype) (a pipeline/recycle.Recycler's) where the
    source decodes image files (an ImageFolder); other sources' arrays are their own."""
    return functools.partial(source.load, empty=empty) if isinstance(source, ImageFolder) else source.load


def _pil_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "RGB":
        return np.array(im)
    if im.mode.startswith("I;16"):
        a = np.array(im).astype(np.uint32) // 257  # 16-bit grayscale -> 8 bit
        return np.repeat(a.astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode == "I" and im.format == "PNG":  # a 16-bit grayscale PNG read as 32-bit ints: scale like I;16
        a = np.clip(np.array(im), 0, 65535).astype(np.uint32) // 257
        return np.repeat(a.astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode in ("I", "F"):  # 32-bit integer / float pixels (TIFF...): no 8-bit scale is implied, refuse by name
        raise DecodeError(getattr(im, "filename", "") or "image",
                          f"{im.format} image of 32-bit {'float' if im.mode == 'F' else 'integer'} pixels (mode {im.mode}) "
                          "has no 8-bit scale: convert it to 8 or 16 bits per channel")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"))  # L, LA, RGBA (alpha dropped, like torchvision), CMYK, YCbCr, ...


# --------------------------------------------------------------------------- ImageFolder


def src_shapes(source, indices=None, width: int = 2) -> np.ndarray:
    """int64 [n, width]: source.src_shape(i) for each index (all samples when None); width 2 (H, W)
    for images, 1 (frames) for videos."""
    idx = range(len(source)) if indices is None else np.asarray(indices).reshape(-1)
    return np.asarray([source.src_shape(int(i)) for i in idx], dtype=np.int64).reshape(-1, width)


def _check_entry(root: Path, path: str) -> None:
    """DataError for an entry that cannot become a sample id: a name that is not UTF-8 (ids are
    stored as UTF-8 text), a symlink loop or a broken link."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"image folder {str(root)!r}: the name {os.fsencode(path)!r} is not valid UTF-8 "
                        "(sample ids are stored as UTF-8 text): rename it") from None
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:
            what = "a symlink loop" if e.errno == errno.ELOOP else f"a broken symlink ({e.strerror})"
            raise DataError(f"image folder {str(root)!r}: {path!r} is {what} -> {os.readlink(path)!r}") from None


def _image_files(top: Path, root: Path) -> list[str]:
    """Image files under `top` (any depth, hidden entries skipped) as sorted '/' paths relative to root.
    Linked folders are followed; a link back to a folder above it (a loop) is a DataError naming it."""
    files = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for d in dirnames:
            link = os.path.join(dirpath, d)
            _check_entry(root, link)
            if os.path.islink(link):
                target, here = os.path.realpath(link), os.path.realpath(dirpath)
                if os.path.commonpath([target, here]) == target:
                    raise DataError(f"image folder {str(root)!r}: {link!r} is a symlink loop: it points to "
                                    f"{os.readlink(link)!r}, a folder that contains it")
        rel = Path(dirpath).relative_to(root).as_posix()
        names = [f for f in filenames if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
        for f in names:
            _check_entry(root, os.path.join(dirpath, f))
        files += [f"{rel}/{f}" if rel != "." else f for f in names]
    return sorted(files)


class ImageFolder:
    """root/<class>/**/<file>.{jpg,jpeg,png}; classes sorted by folder name, files sorted.

    ``ids`` are paths relative to ``root`` with '/' separators. Hidden files and folders
    (leading '.') are ignored, as are files directly under root.
    ``unlabeled=True``: an unlabelled folder: every image file under root (at any depth, sorted),
    label -1, no classes (for the teacher stage to label, e.g. ADL's semi-supervised scheme).
    """

    kind = "image_folder"

    def __init__(self, root, *, unlabeled: bool = False, _table: tuple | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist or is not a directory")
        if _table is not None:
            self.ids, self.labels, self.classes = _table
            return
        if unlabeled:
            self.ids = _image_files(self.root, self.root)
            if not self.ids:
                raise DataError(f"unlabelled image folder {str(self.root)!r} has no {'/'.join(EXTENSIONS)} files")
            self.labels = np.full(len(self.ids), -1, np.int64)
            self.classes = []
            return
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            hint = (" (an unlabelled folder of images? `labelstore teach --unlabeled` labels one; commands given its "
                    "store open it as unlabelled by themselves)") if _image_files(self.root, self.root) else ""
            raise DataError(f"image folder {str(self.root)!r} has no class sub-folders{hint}")
        ids: list[str] = []
        labels: list[int] = []
        for ci, c in enumerate(classes):
            _check_entry(self.root, str(self.root / c))
            files = _image_files(self.root / c, self.root)
            ids += files
            labels += [ci] * len(files)
        if not ids:
            raise DataError(f"image folder {str(self.root)!r} has no {'/'.join(EXTENSIONS)} files in its class folders")
        self.ids = ids
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes

    @classmethod
    def from_table(cls, root, ids: Sequence[str], labels=None, classes: Sequence[str] | None = None) -> "ImageFolder":
        """A source over a recorded sample table (e.g. from a label store), without listing the folder."""
        ids = [str(i) for i in ids]
        labels = np.full(len(ids), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if len(labels) != len(ids):
            raise DataError(f"{len(labels)} labels for {len(ids)} ids")
        classes = list(classes) if classes is not None else _default_classes(labels)
        return cls(root, _table=(ids, labels, classes))

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, i: int) -> Path:
        return self.root / self.ids[i]

    def load(self, i: int, empty=np.empty) -> np.ndarray:
        """uint8 [H, W, 3] of image i; empty: as decode_file's."""
        path = os.path.join(os.fspath(self.root), self.ids[i])
        try:
            return decode_file(path, empty)
        except DecodeError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DecodeError(path, f"{type(e).__name__}: {e}") from e

    def src_shape(self, i: int) -> tuple[int, int]:
        path = self.path(i)
        try:
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DecodeError(path, f"{type(e).__name__}: {e}") from e
        return int(h), int(w)

    def src_shapes(self, indices=None) -> np.ndarray:
        return src_shapes(self, indices)

    def fingerprint(self) -> dict:
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "classes": self.classes}).encode())
        for rel, lab in zip(self.ids, self.labels.tolist()):
            try:
                size = os.stat(self.root / rel).st_size
            except OSError as e:
                raise DataError(f"image folder {str(self.root)!r} changed since it was listed: {rel!r}: {e}") from e
            h.update(f"{rel}\t{size}\t{lab}\n".encode("utf-8", "surrogateescape"))  # any file name
        return {"kind": self.kind, "num_samples": len(self), "num_classes": len(self.classes), "digest": h.hexdigest()}

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "root": str(self.root.resolve()),
            "num_samples": len(self),
            "classes": list(self.classes),
            "decoder": decoders(),
        }

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, n={len(self)}, classes={len(self.classes)})"


# --------------------------------------------------------------------------- HDF5


class HDF5Images:
    """uint8 images [N, H, W, 3] (or grayscale [N, H, W]) in an HDF5 file, labels optional.

    The h5py file is opened lazily in each process (handles are not fork-safe) and dropped
    when pickled. Class names come from a "classes" attribute on the file or the images
    dataset if present.
    """

    kind = "hdf5"

    def __init__(self, path, images: str = "images", labels: str | None = "labels"):
        import h5py

        self.path = Path(path)
        self.images_key = images
        if not self.path.is_file():
            raise FileNotFoundError(f"HDF5 file {str(self.path)!r} does not exist")
        with h5py.File(self.path, "r") as f:
            if images not in f:
                raise DataError(f"HDF5 file {str(self.path)!r} has no dataset {images!r} (has: {sorted(f.keys())})")
            ds = f[images]
            if ds.dtype != np.uint8 or ds.ndim not in (3, 4) or (ds.ndim == 4 and ds.shape[3] not in (1, 3)):
                raise DataError(
                    f"HDF5 dataset {str(self.path)}:{images} must be uint8 [N, H, W, 3] or [N, H, W], "
                    f"got {ds.dtype} {ds.shape}"
                )
            self.shape = tuple(int(s) for s in ds.shape)
            n = self.shape[0]
            if labels is not None and labels in f:
                lab = np.asarray(f[labels][()]).astype(np.int64).reshape(-1)
                if len(lab) != n:
                    raise DataError(f"HDF5 {str(self.path)}:{labels} has {len(lab)} labels for {n} images")
                self.labels_key = labels
            elif labels is None or labels == "labels":
                lab = np.full(n, -1, np.int64)
                self.labels_key = None
            else:
                raise DataError(f"HDF5 file {str(self.path)!r} has no labels dataset {labels!r}")
            classes = ds.attrs.get("classes", f.attrs.get("classes"))
        self.labels = lab
        if classes is None:
            self.classes = _default_classes(lab)
        else:
            if isinstance(classes, (str, bytes)):
                classes = json.loads(classes)
            self.classes = [c.decode() if isinstance(c, bytes) else str(c) for c in classes]
        self.ids = [f"index:{i}" for i in range(n)]
        self._h5 = None
        self._pid = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_h5"] = None
        d["_pid"] = None
        return d

    def _dataset(self):
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5[self.images_key]

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def load(self, i: int) -> np.ndarray:
        what = f"{self.path}:{self.images_key}[{i}]"
        if not 0 <= i < len(self):
            raise IndexError(f"{what}: index out of range for {len(self)} images")
        try:
            arr = np.asarray(self._dataset()[i])
        except (OSError, KeyError, ValueError) as e:
            raise DecodeError(what, f"{type(e).__name__}: {e}") from e
        return _to_rgb(arr, what)

    def src_shape(self, i: int) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def src_shapes(self, indices=None) -> np.ndarray:
        n = len(self) if indices is None else len(indices)
        return np.tile(np.array([self.shape[1:3]], np.int64), (n, 1))

    def fingerprint(self) -> dict:
        ds = self._dataset()
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "shape": self.shape, "dtype": "uint8", "classes": self.classes}).encode())
        h.update(self.labels.tobytes())
        n = len(self)
        row_bytes = int(np.prod(self.shape[1:]))
        full = n * row_bytes < _FULL_HASH_LIMIT
        if full:
            step = max(1, (64 << 20) // max(row_bytes, 1))
            for s in range(0, n, step):
                h.update(np.ascontiguousarray(ds[s : s + step]).tobytes())
        else:
            rows = sorted(set(range(min(n, 8))) | set(range(max(0, n - 8), n)) | set(np.linspace(0, n - 1, 32).astype(int).tolist()))
            for r in rows:
                h.update(np.ascontiguousarray(ds[r]).tobytes())
        return {"kind": self.kind, "num_samples": n, "shape": list(self.shape), "full_hash": full, "digest": h.hexdigest()}

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "images": self.images_key,
            "labels": self.labels_key,
            "shape": list(self.shape),
            "num_samples": len(self),
            "classes": list(self.classes),
        }

    def __repr__(self) -> str:
        return f"HDF5Images({str(self.path)!r}, images={self.images_key!r}, shape={self.shape})"


# --------------------------------------------------------------------------- in memory


class ArrayImages:
    """In-memory source: uint8 [N, H, W, 3] / [N, H, W] array, or a list of [H, W(, C)] arrays."""

    kind = "array"

    def __init__(self, images, labels=None, classes: Sequence[str] | None = None):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim not in (3, 4):
                raise DataError(f"images must be uint8 [N, H, W, 3] or [N, H, W], got {images.dtype} {images.shape}")
            self.images = images
        else:
            self.images = [np.asarray(im) for im in images]
            for i, im in enumerate(self.images):
                if im.dtype != np.uint8 or im.ndim not in (2, 3):
                    raise DataError(f"image {i} must be uint8 [H, W(, C)], got {im.dtype} {im.shape}")
        n = len(self.images)
        self.labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != n:
            raise DataError(f"{len(self.labels)} labels for {n} images")
        self.classes = list(classes) if classes is not None else _default_classes(self.labels)
        self.ids = [f"index:{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> np.ndarray:
        return _to_rgb(np.asarray(self.images[i]), f"index:{i}").copy()

    def src_shape(self, i: int) -> tuple[int, int]:
        s = self.images[i].shape
        return int(s[0]), int(s[1])

    def src_shapes(self, indices=None) -> np.ndarray:
        return src_shapes(self, indices)

    def fingerprint(self) -> dict:
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "classes": self.classes}).encode())
        h.update(self.labels.tobytes())
        for i in range(len(self)):
            im = np.ascontiguousarray(self.images[i])
            h.update(repr(im.shape).encode())
            h.update(im.tobytes())
        return {"kind": self.kind, "num_samples": len(self), "digest": h.hexdigest()}

    def describe(self) -> dict:
        return {"kind": self.kind, "num_samples": len(self), "classes": list(self.classes)}


# --------------------------------------------------------------------------- open_source

_H5_SPEC = re.compile(r"^(?P<path>.*?\.(?:h5|hdf5))(?::(?P<images>[^:]*))?(?::(?P<labels>[^:]*))?$", re.IGNORECASE)


def open_source(spec, unlabeled: bool = False) -> ImageFolder | HDF5Images:
    """A directory -> ImageFolder (unlabeled=True: every image under it, unlabelled);
    "file.h5[:images_key[:labels_key]]" -> HDF5Images."""
    spec = str(spec)
    p = Path(spec)
    if p.is_dir():
        return ImageFolder(p, unlabeled=unlabeled)
    m = _H5_SPEC.match(spec)
    if m:
        path = m["path"]
        if not Path(path).is_file():
            raise FileNotFoundError(f"image source {spec!r}: HDF5 file {path!r} does not exist")
        return HDF5Images(path, images=m["images"] or "images", labels=m["labels"] or "labels")
    if not p.exists():
        raise FileNotFoundError(
            f"image source {spec!r} does not exist (expected a folder of class sub-folders or an .h5/.hdf5 file)"
        )
    raise DataError(f"cannot open image source {spec!r}: not a directory and not an .h5/.hdf5 file")


# --------------------------------------------------------------------------- shapes dataset

# alphabetical, so label = class index in both the ImageFolder layout and the HDF5 file
SHAPE_CLASSES = ["circle", "diamond", "ellipse", "hbar", "plus", "ring", "square", "triangle", "vbar", "x"]
_SHAPES_VERSION = 1
_SS = 2  # supersampling factor for antialiased masks


def _unit_circle(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_CIRCLE = _unit_circle()


def _shape_polys(rng: np.random.Generator, cls: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Unit-radius polygons (filled, holes) and a rotation angle in degrees for class `cls`."""
    name = SHAPE_CLASSES[cls]
    holes: list[np.ndarray] = []
    if name == "circle":
        polys, ang = [_CIRCLE], 0.0
    elif name == "ellipse":
        polys, ang = [_CIRCLE * [1.0, rng.uniform(0.4, 0.6)]], rng.uniform(0, 180)
    elif name in ("square", "diamond"):
        a = 0.78
        sq = np.array([[-a, -a], [a, -a], [a, a], [-a, a]]) * [1.0, rng.uniform(0.85, 1.0)]
        polys, ang = [sq], rng.uniform(-18, 18) + (45.0 if name == "diamond" else 0.0)
    elif name == "triangle":
        t = np.deg2rad(90 + np.arange(3) * 120)
        polys, ang = [np.stack([np.cos(t), np.sin(t)], 1) * 1.05], rng.uniform(0, 360)
    elif name in ("plus", "x"):
        t = rng.uniform(0.22, 0.36)
        polys = [np.array([[-1, -t], [1, -t], [1, t], [-1, t]]), np.array([[-t, -1], [t, -1], [t, 1], [-t, 1]])]
        ang = rng.uniform(-18, 18) + (45.0 if name == "x" else 0.0)
    elif name == "ring":
        polys, holes, ang = [_CIRCLE], [_CIRCLE * rng.uniform(0.45, 0.68)], 0.0
    elif name in ("hbar", "vbar"):
        t = rng.uniform(0.16, 0.28)
        polys = [np.array([[-1, -t], [1, -t], [1, t], [-1, t]])]
        ang = rng.uniform(-20, 20) + (90.0 if name == "vbar" else 0.0)
    else:  # pragma: no cover
        raise ValueError(f"unknown shape class {cls}")  # internal invariant
    return polys, holes, ang


def _mask(h: int, w: int, polys, holes=(), width: int = 0) -> np.ndarray:
    """Antialiased float32 [h, w] coverage of pixel-coordinate polygons (or polylines if width>0)."""
    m = Image.new("L", (w * _SS, h * _SS), 0)
    d = ImageDraw.Draw(m)
    for p in polys:
        pts = [tuple(v) for v in (p * _SS).tolist()]
        if width:
            d.line(pts, fill=255, width=width * _SS)
        else:
            d.polygon(pts, fill=255)
    for p in holes:
        d.polygon([tuple(v) for v in (p * _SS).tolist()], fill=0)
    a = np.asarray(m, dtype=np.float32).reshape(h, _SS, w, _SS).mean(axis=(1, 3))
    return a * (1.0 / 255.0)


def _place(poly: np.ndarray, r: float, ang_deg: float, cx: float, cy: float) -> np.ndarray:
    a = math.radians(ang_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (poly @ rot.T) * r + [cx, cy]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0 = rng.uniform(0, 255, 3)
    c1 = np.clip(c0 + rng.normal(0, 60, 3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    th = rng.uniform(0, 2 * math.pi)
    t = (math.cos(th) * xx / w + math.sin(th) * yy / h + 1.0) * 0.5
    bg = c0 + (c1 - c0) * t[:, :, None]
    if rng.random() < 0.5:  # stripes / texture
        th2 = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 10.0)
        s = np.sin(2 * math.pi * (math.cos(th2) * xx + math.sin(th2) * yy) / period + rng.uniform(0, 2 * math.pi))
        bg = bg + (rng.uniform(6, 22) * s)[:, :, None] * rng.uniform(0.3, 1.0, 3)
    bg = bg + rng.normal(0, rng.uniform(2, 10), (h, w, 3))
    return bg.astype(np.float32)


def _colour_far_from(rng: np.random.Generator, ref: np.ndarray, min_dist: float) -> np.ndarray:
    col = rng.uniform(0, 255, 3)
    for _ in range(4):
        if np.linalg.norm(col - ref) >= min_dist:
            break
        col = rng.uniform(0, 255, 3)
    return col


def generate_shape(rng: np.random.Generator, cls: int, h: int, w: int,
                   object_scale: tuple[float, float] = (0.3, 0.46)) -> np.ndarray:
    """One uint8 [h, w, 3] image of shape class `cls` (index into SHAPE_CLASSES): draw_shape's image."""
    return draw_shape(rng, cls, h, w, object_scale)[0]


def draw_shape(rng: np.random.Generator, cls: int, h: int, w: int,
               object_scale: tuple[float, float] = (0.3, 0.46)) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One uint8 [h, w, 3] image of shape class `cls` and the shape's box (y, x, h, w) in pixels.

    The shape's radius is r = U(object_scale) * min(h, w) (its unit polygons span [-1, 1]); its box is
    the bounding box of the pixels it covers at least half (antialiased coverage >= 0.5), before the
    occluder line and the noise. The default object_scale is the built-in dataset's.
    """
    img = _background(rng, h, w)
    bg_mean = img.reshape(-1, 3).mean(0)
    m = min(h, w)
    # clutter: small blobs behind the shape
    for _ in range(rng.integers(0, 3)):
        rr = rng.uniform(0.05, 0.1) * m
        poly = _place(_CIRCLE if rng.random() < 0.5 else _CIRCLE[::10], rr, rng.uniform(0, 90),
                      rng.uniform(0, w), rng.uniform(0, h))
        a = _mask(h, w, [poly])[:, :, None]
        img = img * (1 - a) + rng.uniform(0, 255, 3) * a
    # the shape
    polys, holes, ang = _shape_polys(rng, cls)
    r = rng.uniform(*object_scale) * m
    cx = rng.uniform(0.8 * r, w - 0.8 * r) if w > 1.6 * r else w / 2
    cy = rng.uniform(0.8 * r, h - 0.8 * r) if h > 1.6 * r else h / 2
    a = _mask(h, w, [_place(p, r, ang, cx, cy) for p in polys], [_place(p, r, ang, cx, cy) for p in holes])
    ys, xs = np.nonzero(a >= 0.5)
    box = ((int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)) if ys.size
           else (0, 0, 0, 0))
    col = _colour_far_from(rng, bg_mean, rng.uniform(60, 160))
    shade = 1.0 + rng.uniform(-0.25, 0.25) * (np.linspace(-1, 1, h, dtype=np.float32)[:, None, None])
    img = img * (1 - a[:, :, None]) + np.clip(col * shade, 0, 255) * a[:, :, None]
    # occluder: a line across the image in front of the shape
    if rng.random() < 0.3:
        p = np.array([[rng.uniform(0, w), rng.uniform(0, h)], [rng.uniform(0, w), rng.uniform(0, h)]])
        a = _mask(h, w, [p], width=int(rng.integers(1, 3)))[:, :, None]
        img = img * (1 - a) + rng.uniform(0, 255, 3) * a
    img = img + rng.normal(0, rng.uniform(2, 8), img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), box


def _size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """Random (h, w) in [lo, hi] with aspect ratio within [3/4, 4/3]."""
    h = int(rng.integers(lo, hi + 1))
    w = int(np.clip(round(h * math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))), lo, hi))
    return h, w


OBJECTS_FILE = ".objects.json"  # in each split folder: {sample id: [y, x, h, w]} (make_shapes_dataset object_scale=)


def _write_split(dst: Path, n: int, seed: int, split: int, lo: int, hi: int,
                 object_scale: tuple[float, float] | None = None) -> None:
    for c in SHAPE_CLASSES:
        (dst / c).mkdir(parents=True, exist_ok=True)
    boxes = {}
    for i in range(n):
        rng = np.random.default_rng([seed, split, i])
        cls = i % len(SHAPE_CLASSES)
        h, w = _size(rng, lo, hi)
        img, box = draw_shape(rng, cls, h, w, *([object_scale] if object_scale else []))
        im = Image.fromarray(img)
        name = f"{SHAPE_CLASSES[cls]}/{i:05d}" + (".jpg" if i % 3 == 0 else ".png")  # the ImageFolder id
        if i % 3 == 0:
            im.save(dst / name, format="JPEG", quality=int(rng.integers(70, 96)))
        else:
            im.save(dst / name, format="PNG", compress_level=1)
        boxes[name] = list(box)
    if object_scale is not None:
        (dst / OBJECTS_FILE).write_text(json.dumps(boxes))


def object_boxes(split_dir) -> dict[str, tuple[int, int, int, int]]:
    """{sample id: (y, x, h, w)}: the shape's box in each image of a split written by
    make_shapes_dataset(..., object_scale=...) (draw_shape's box, source pixels)."""
    path = Path(split_dir) / OBJECTS_FILE
    try:
        return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError) as e:
        raise DataError(f"{str(path)!r}: cannot read the object boxes ({e}); the folder was not written by "
                        "make_shapes_dataset with object_scale") from None


def make_shapes_dataset(root, n_train: int = 2000, n_test: int = 500, seed: int = 0, min_size: int = 28,
                        max_size: int = 48, object_scale: tuple[float, float] | None = None) -> tuple[Path, Path]:
    """Write the shapes dataset as root/train/<class>/*.{png,jpg} and root/test/...

    object_scale: the shape's radius range as a fraction of the image's shorter side (draw_shape;
    None: the built-in (0.3, 0.46)); when given, each split also gets the shapes' boxes
    (object_boxes). Deterministic for its arguments. Returns (train_dir, test_dir). A root already
    holding the same dataset (same arguments) is reused; a root holding anything else raises
    FileExistsError rather than being overwritten.
    """
    if not 1 <= min_size <= max_size:
        raise ConfigError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    if object_scale is not None:
        object_scale = tuple(float(v) for v in object_scale)
        if len(object_scale) != 2 or not 0 < object_scale[0] <= object_scale[1] <= 0.5:
            raise ConfigError(f"object_scale must be (lo, hi) with 0 < lo <= hi <= 0.5, got {object_scale}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "labelstore-shapes", "version": _SHAPES_VERSION, "n_train": n_train, "n_test": n_test,
            "seed": seed, "min_size": min_size, "max_size": max_size}
    if object_scale is not None:
        meta["object_scale"] = list(object_scale)
    marker = root / ".shapes.json"
    train, test = root / "train", root / "test"

    def done() -> bool:
        try:
            return json.loads(marker.read_text()) == meta and train.is_dir() and test.is_dir()
        except (OSError, ValueError):
            return False

    if done():
        return train, test
    for d in (train, test):
        if d.exists() and any(d.iterdir()):
            raise FileExistsError(f"{str(d)!r} exists and is not this shapes dataset; remove it or use another root")
    tmp = Path(tempfile.mkdtemp(prefix=".shapes-tmp-", dir=root))
    try:
        _write_split(tmp / "train", n_train, seed, 0, min_size, max_size, object_scale)
        _write_split(tmp / "test", n_test, seed, 1, min_size, max_size, object_scale)
        try:
            for d in (train, test):
                if d.exists():
                    d.rmdir()  # empty (checked above)
                os.replace(tmp / d.name, d)
        except OSError:
            if done():  # another process finished first
                return train, test
            raise
        (tmp / "marker").write_text(json.dumps(meta))
        os.replace(tmp / "marker", marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return train, test


def make_hdf5_dataset(path, n: int, seed: int = 0, size: int = 32) -> Path:
    """Write n shapes images (uint8 [n, size, size, 3]) + labels + class names to an HDF5 file."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(SHAPE_CLASSES)
    for i in range(n):
        images[i] = generate_shape(np.random.default_rng([seed, 2, i]), int(labels[i]), size, size)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(min(max(n, 1), 256), size, size, 3))
        f.create_dataset("labels", data=labels)
        f.attrs["classes"] = json.dumps(SHAPE_CLASSES)
    return path
