import json
import multiprocessing as mp
import os
import pickle

import h5py
import numpy as np
import pytest
from PIL import Image

from labelstore.pipeline.augment import make_policy
from labelstore.pipeline.images import (
    SHAPE_CLASSES,
    ArrayImages,
    DecodeError,
    HDF5Images,
    ImageFolder,
    generate_shape,
    make_hdf5_dataset,
    make_shapes_dataset,
    open_source,
)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    train, test = make_shapes_dataset(root, n_train=60, n_test=20, seed=3, min_size=20, max_size=40)
    return root, train, test


def _files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_shapes_dataset_layout(shapes_root):
    root, train, test = shapes_root
    assert train == root / "train" and test == root / "test"
    src = ImageFolder(train)
    assert len(src) == 60 and len(ImageFolder(test)) == 20
    assert src.classes == SHAPE_CLASSES
    assert np.bincount(src.labels).tolist() == [6] * 10  # balanced
    exts = {os.path.splitext(i)[1] for i in src.ids}
    assert exts == {".png", ".jpg"}
    for i, rel in enumerate(src.ids):
        assert rel.split("/")[0] == src.classes[src.labels[i]]
    shapes = src.src_shapes()
    assert len({tuple(s) for s in shapes.tolist()}) > 10  # variable sizes
    assert (shapes[:, 0] != shapes[:, 1]).any()  # non-square too
    assert shapes.min() >= 20 and shapes.max() <= 40


def test_image_folder_load_matches_src_shape(shapes_root):
    src = ImageFolder(shapes_root[1])
    for i in range(len(src)):
        img = src.load(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[:2] == src.src_shape(i)
    assert np.array_equal(src.src_shapes([3, 1]), [src.src_shape(3), src.src_shape(1)])


def test_shapes_dataset_deterministic_and_reused(tmp_path, shapes_root):
    root, train, _ = shapes_root
    a, _ = make_shapes_dataset(tmp_path / "a", n_train=60, n_test=20, seed=3, min_size=20, max_size=40)
    assert _files(a) == _files(train)
    for rel in _files(a)[:12]:
        assert (a / rel).read_bytes() == (train / rel).read_bytes()
    b, _ = make_shapes_dataset(tmp_path / "b", n_train=60, n_test=20, seed=4, min_size=20, max_size=40)
    assert (b / "circle/00000.jpg").read_bytes() != (train / "circle/00000.jpg").read_bytes()
    # same arguments again: reused without rewriting; other arguments: refused, not overwritten
    mtime = (a / "circle/00000.jpg").stat().st_mtime_ns
    assert make_shapes_dataset(tmp_path / "a", n_train=60, n_test=20, seed=3, min_size=20, max_size=40)[0] == a
    assert (a / "circle/00000.jpg").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError):
        make_shapes_dataset(tmp_path / "a", n_train=30, n_test=20, seed=3)


def test_generate_shape_deterministic():
    x = generate_shape(np.random.default_rng(5), 3, 21, 34)
    assert x.shape == (21, 34, 3) and x.dtype == np.uint8
    assert np.array_equal(x, generate_shape(np.random.default_rng(5), 3, 21, 34))
    assert not np.array_equal(x, generate_shape(np.random.default_rng(6), 3, 21, 34))
    assert x.std() > 5  # not blank


def _write_mixed_folder(root):
    rs = np.random.default_rng(0)
    (root / "b_cls" / "nested").mkdir(parents=True)
    (root / "a_cls").mkdir()
    (root / ".hidden_cls").mkdir()
    rgb = rs.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "a_cls" / "rgb.png")
    Image.fromarray(rgb[:, :, 0]).save(root / "a_cls" / "gray.png")
    rgba = np.concatenate([rgb, np.full((9, 13, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "a_cls" / "alpha.png")
    Image.fromarray(rgb).convert("P").save(root / "b_cls" / "palette.PNG")
    Image.fromarray(rs.integers(0, 256, (20, 11, 3), dtype=np.uint8)).save(root / "b_cls" / "photo.JPEG")
    Image.fromarray(rgb).save(root / "b_cls" / "nested" / "deep.jpg")
    (root / "a_cls" / "notes.txt").write_text("not an image")
    Image.fromarray(rgb).save(root / "a_cls" / ".skip.png")
    Image.fromarray(rgb).save(root / ".hidden_cls" / "x.png")
    Image.fromarray(rgb).save(root / "top_level.png")
    return rgb


def test_image_folder_modes_and_listing(tmp_path):
    rgb = _write_mixed_folder(tmp_path)
    src = ImageFolder(tmp_path)
    assert src.classes == ["a_cls", "b_cls"]
    assert src.ids == ["a_cls/alpha.png", "a_cls/gray.png", "a_cls/rgb.png",
                       "b_cls/nested/deep.jpg", "b_cls/palette.PNG", "b_cls/photo.JPEG"]
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1] and src.labels.dtype == np.int64
    imgs = [src.load(i) for i in range(len(src))]
    assert all(im.dtype == np.uint8 and im.shape[2] == 3 for im in imgs)
    assert np.array_equal(imgs[0], rgb)  # alpha dropped
    assert np.array_equal(imgs[1], np.repeat(rgb[:, :, :1], 3, axis=2))  # gray -> 3 equal channels
    assert np.array_equal(imgs[2], rgb)
    assert imgs[4].shape == (9, 13, 3)
    assert [src.src_shape(i) for i in range(len(src))] == [im.shape[:2] for im in imgs]
    assert src.src_shape(5) == (20, 11)
    d = src.describe()
    assert d["root"] == str(tmp_path.resolve()) and d["classes"] == ["a_cls", "b_cls"]
    json.dumps(d)
    # from_table maps recorded ids to files without listing the folder
    t = ImageFolder.from_table(tmp_path, ["b_cls/photo.JPEG", "a_cls/rgb.png"], [1, 0], ["a_cls", "b_cls"])
    assert np.array_equal(t.load(1), rgb) and t.src_shape(0) == (20, 11) and t.labels.tolist() == [1, 0]


def test_fingerprint_tracks_sizes_names_and_labels(tmp_path):
    _write_mixed_folder(tmp_path)
    fp = ImageFolder(tmp_path).fingerprint()
    assert {"kind", "num_samples", "digest"} <= set(fp) and fp["num_samples"] == 6
    json.dumps(fp)
    assert ImageFolder(tmp_path).fingerprint() == fp  # stable
    # a file changes size
    with open(tmp_path / "a_cls" / "rgb.png", "ab") as f:
        f.write(b"\0" * 10)
    fp2 = ImageFolder(tmp_path).fingerprint()
    assert fp2["digest"] != fp["digest"]
    # a file is renamed
    os.rename(tmp_path / "a_cls" / "gray.png", tmp_path / "a_cls" / "grey.png")
    fp3 = ImageFolder(tmp_path).fingerprint()
    assert fp3["digest"] != fp2["digest"] and fp3["num_samples"] == 6
    # a file moves to another class (same name and size, other label)
    os.rename(tmp_path / "a_cls" / "grey.png", tmp_path / "b_cls" / "grey.png")
    fp4 = ImageFolder(tmp_path).fingerprint()
    assert fp4["digest"] != fp3["digest"]
    # a listing made before a file vanished refuses to fingerprint
    stale = ImageFolder(tmp_path)
    os.remove(tmp_path / "b_cls" / "grey.png")
    with pytest.raises(ValueError, match="grey.png"):
        stale.fingerprint()


def test_decode_error_names_the_file(tmp_path):
    (tmp_path / "c").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c" / "good.png")
    (tmp_path / "c" / "bad.png").write_bytes(b"this is not a png at all" * 10)
    good = (tmp_path / "c" / "good.png").read_bytes()
    (tmp_path / "c" / "trunc.png").write_bytes(good[: len(good) // 2])
    src = ImageFolder(tmp_path)
    assert src.ids == ["c/bad.png", "c/good.png", "c/trunc.png"]
    assert src.load(1).shape == (8, 8, 3)
    for i in (0, 2):
        with pytest.raises(DecodeError) as e:
            src.load(i)
        assert src.ids[i].split("/")[1] in str(e.value) and e.value.path.endswith(src.ids[i].split("/")[1])
        assert isinstance(e.value, ValueError)
    with pytest.raises(DecodeError, match="bad.png"):
        src.src_shape(0)
    err = pickle.loads(pickle.dumps(DecodeError("x/y.png", "boom")))
    assert isinstance(err, DecodeError) and "x/y.png" in str(err) and err.reason == "boom"


def _load_in_child(args):
    src, i = args
    return src.load(i)


def test_hdf5_round_trip(tmp_path):
    path = make_hdf5_dataset(tmp_path / "d.h5", n=25, seed=1, size=16)
    src = HDF5Images(path)
    assert len(src) == 25 and src.ids[:2] == ["index:0", "index:1"]
    assert src.classes == SHAPE_CLASSES
    assert src.labels.tolist() == [i % 10 for i in range(25)] and src.labels.dtype == np.int64
    with h5py.File(path, "r") as f:
        raw = f["images"][()]
    for i in (0, 7, 24):
        assert np.array_equal(src.load(i), raw[i]) and src.src_shape(i) == (16, 16)
    assert raw.std() > 5
    fp = src.fingerprint()
    assert fp["kind"] == "hdf5" and fp["num_samples"] == 25 and fp["full_hash"]
    json.dumps(fp)
    json.dumps(src.describe())
    assert make_hdf5_dataset(tmp_path / "e.h5", n=25, seed=1, size=16) and HDF5Images(tmp_path / "e.h5").fingerprint() == fp
    # pickling drops the handle; a forked worker opens its own
    src2 = pickle.loads(pickle.dumps(src))
    assert src2._h5 is None and np.array_equal(src2.load(3), raw[3])
    with mp.get_context("fork").Pool(1) as pool:
        out = pool.map(_load_in_child, [(src, 5)])
    assert np.array_equal(out[0], raw[5])
    assert np.array_equal(src.load(6), raw[6])  # parent handle still fine
    src.close()
    src2.close()
    # one changed pixel changes the digest
    with h5py.File(path, "r+") as f:
        f["images"][4, 0, 0, 0] ^= 1
    assert HDF5Images(path).fingerprint()["digest"] != fp["digest"]


def test_hdf5_grayscale_custom_keys_and_unlabeled(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (5, 6, 7), dtype=np.uint8)
    with h5py.File(tmp_path / "g.hdf5", "w") as f:
        f["imgs"] = gray
        f["y"] = np.array([1, 0, 1, 1, 0])
    src = open_source(f"{tmp_path}/g.hdf5:imgs:y")
    assert isinstance(src, HDF5Images) and src.labels.tolist() == [1, 0, 1, 1, 0]
    assert src.classes == ["0", "1"]
    assert np.array_equal(src.load(2), np.repeat(gray[2][:, :, None], 3, axis=2))
    assert src.src_shape(0) == (6, 7)
    unl = open_source(f"{tmp_path}/g.hdf5:imgs")
    assert (unl.labels == -1).all() and unl.classes == []
    with pytest.raises(ValueError, match="nolabels"):
        HDF5Images(tmp_path / "g.hdf5", images="imgs", labels="nolabels")
    with pytest.raises(ValueError, match="missing"):
        open_source(f"{tmp_path}/g.hdf5:missing")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["images"] = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        HDF5Images(tmp_path / "f.h5")


def test_array_images_variable_sizes():
    imgs = [np.full((4, 6, 3), 9, np.uint8), np.full((7, 3), 200, np.uint8)]
    src = ArrayImages(imgs, labels=[2, -1])
    assert src.ids == ["index:0", "index:1"] and src.labels.tolist() == [2, -1]
    assert src.classes == ["0", "1", "2"]
    assert src.load(1).shape == (7, 3, 3) and (src.load(1) == 200).all()
    assert src.src_shapes().tolist() == [[4, 6], [7, 3]]
    fp = src.fingerprint()
    imgs[0][0, 0, 0] = 10
    assert ArrayImages(imgs, labels=[2, -1]).fingerprint()["digest"] != fp["digest"]
    assert ArrayImages(imgs, labels=[2, 0]).fingerprint()["digest"] != ArrayImages(imgs, labels=[2, -1]).fingerprint()["digest"]
    with pytest.raises(ValueError, match="labels"):
        ArrayImages(imgs, labels=[1])


def test_open_source_dispatch_and_errors(tmp_path, shapes_root):
    assert isinstance(open_source(shapes_root[1]), ImageFolder)
    assert isinstance(open_source(str(shapes_root[2])), ImageFolder)
    make_hdf5_dataset(tmp_path / "x.H5", n=3)
    assert isinstance(open_source(tmp_path / "x.H5"), HDF5Images)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        open_source(f"{tmp_path}/absent.h5:images")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="data.csv"):
        open_source(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        open_source(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="noimg"):
        open_source(tmp_path / "noimg")


def test_folder_views_render_end_to_end(shapes_root):
    src = ImageFolder(shapes_root[1])
    pol = make_policy("cutmix")
    ids = np.arange(len(src))
    p = pol.sample(0, 0, ids, src.src_shapes(), len(src))
    part = pol.partners(p)
    images = [src.load(i) for i in ids]
    prow = {k: v[np.maximum(part, 0)] for k, v in p.items()}
    views = pol.to_input(pol.render_batch(images, p, [images[j] if j >= 0 else None for j in part], prow))
    assert views.shape == (len(src), 3, 32, 32) and bool(np.isfinite(views.numpy()).all())
    # normalised with ImageNet statistics: roughly centred
    assert abs(float(views.mean())) < 1.0


def test_jpeg_decodes_with_libjpeg_turbo_and_the_rest_with_pillow(tmp_path):
    import simplejpeg

    from labelstore.pipeline.images import decoders

    (tmp_path / "c").mkdir()
    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c" / "a.jpg", quality=90)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c" / "b.jpeg")  # libjpeg-turbo gives no RGB: Pillow
    Image.fromarray(rgb).save(tmp_path / "c" / "c.png")
    (tmp_path / "c" / "d.jpg").write_bytes((tmp_path / "c" / "a.jpg").read_bytes()[:200])
    src = ImageFolder(tmp_path)
    data = (tmp_path / "c" / "a.jpg").read_bytes()
    np.testing.assert_array_equal(src.load(0), simplejpeg.decode_jpeg(data, colorspace="RGB"))
    with Image.open(tmp_path / "c" / "b.jpeg") as im:
        np.testing.assert_array_equal(src.load(1), np.array(im.convert("RGB")))
    np.testing.assert_array_equal(src.load(2), rgb)
    with pytest.raises(DecodeError, match="d.jpg"):
        src.load(3)
    assert src.describe()["decoder"] == decoders()
    assert decoders()["jpeg"] == f"simplejpeg {simplejpeg.__version__}"
