"""Stores on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1, the real CLI
in subprocesses (teach, info, inspect, verify, train) and labelstore.open(url, storage_options=...);
plus memory:// in-process and the creation protocol for stores without rename."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import fsspec.config
import numpy as np
import pytest
from conftest import assert_same_arrays, read_arrays, teach_store

import labelstore
from labelstore import location, writer
from labelstore.errors import StoreError
from labelstore.integrity import iter_arrays

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("labelstore"))
BUCKET = "labels"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TEACH = ["--epochs", "2", "--top-k", "3", "--mc-passes", "1", "--policy", "crop-flip", "--image-size", "16",
         "--shard-samples", "16", "--chunk-samples", "8", "--batch-size", "8", "--workers", "1", "--seed", "2",
         "--quiet"]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port) with one bucket; stopped at the end. Yields storage_options."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
        fs.mkdir(BUCKET)
        yield opts
    finally:
        server.stop()


def cli(*args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **CREDENTIALS, **(env or {})}
    p = subprocess.run([EXE, *map(str, args)], cwd=ROOT, env=full, capture_output=True, text=True)
    if check:
        assert p.returncode == 0, f"{args}: rc={p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    return p


def remote_arrays(url: str, opts: dict) -> dict[str, np.ndarray]:
    store = labelstore.open(url, storage_options=opts)
    return {name: arr[...] for name, arr in iter_arrays(store.group)}


@pytest.fixture(scope="module")
def stores(s3, tmp_path_factory, shapes_dir, teacher_ckpt):
    """The same inputs taught to a local directory and to s3://labels/labels.zarr (endpoint via --storage-options)."""
    local = tmp_path_factory.mktemp("s3local") / "labels.zarr"
    url = f"s3://{BUCKET}/labels.zarr"
    cli("teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", local, *TEACH)
    p = cli("teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", url, "--storage-options",
            json.dumps(s3), *TEACH)
    assert "complete" in p.stdout
    return local, url


def test_teach_to_s3_equals_local_and_writes_nothing_locally(stores, s3):
    local, url = stores
    assert not (ROOT / "s3:").exists()  # the bug of the issue: a local folder named s3:
    assert_same_arrays(read_arrays(local), remote_arrays(url, s3))
    store = labelstore.open(url, storage_options=s3)
    assert store.complete and store.attrs["state"] == "complete"
    rec = store.read(1, [0, 17, 40])
    np.testing.assert_array_equal(rec["topk_values"], labelstore.open(local).read(1, [0, 17, 40])["topk_values"])
    assert store.bytes_per_view() > 0 and all(v > 0 for v in store.nbytes_on_disk().values())


def test_info_inspect_verify_on_s3(stores, s3):
    local, url = stores
    opts = ["--storage-options", json.dumps(s3)]
    remote_info = json.loads(cli("info", url, *opts, "--json").stdout)
    local_info = json.loads(cli("info", local, "--json").stdout)
    assert remote_info["state"] == "complete" and remote_info["units_done"] == remote_info["units_total"] == 3
    assert remote_info["bytes_total"] > 0 and remote_info["bytes_per_view"] > 0
    # the same objects as the local files: equal bytes per array
    assert {a["name"]: a["bytes"] for a in remote_info["arrays"]} == {a["name"]: a["bytes"] for a in local_info["arrays"]}
    # endpoint from fsspec's environment configuration instead of --storage-options
    env = {"FSSPEC_S3_ENDPOINT_URL": s3["endpoint_url"]}
    assert json.loads(cli("inspect", url, "--json", env=env).stdout) == json.loads(cli("inspect", local, "--json").stdout)
    p = cli("verify", url, *opts, "--data", stores_data(local), "--samples", "16")
    assert p.stdout.strip().endswith("OK"), p.stdout


def stores_data(local: Path) -> str:
    return labelstore.open(local).attrs["dataset"]["root"]


def test_train_from_s3_equals_local(stores, s3, tmp_path):
    local, url = stores
    data = stores_data(local)
    common = ["--data", data, "--student", "cnn-tiny", "--epochs", "1", "--batch-size", "16"]
    cli("train", "--store", url, "--storage-options", json.dumps(s3), *common, "--out", tmp_path / "remote")
    cli("train", "--store", local, *common, "--out", tmp_path / "local")
    remote = json.loads((tmp_path / "remote" / "metrics.json").read_text())
    here = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert remote["history"][0]["views"] == here["history"][0]["views"] == 48
    assert np.isfinite(remote["history"][0]["loss"]) and (tmp_path / "remote" / "student.pt").stat().st_size > 0


def test_existing_url_store_needs_resume_and_unknown_url_is_one_error_line(stores, s3, shapes_dir, teacher_ckpt):
    _, url = stores
    p = cli("teach", "--data", shapes_dir, "--teacher", teacher_ckpt, "--out", url, "--storage-options",
            json.dumps(s3), *TEACH, check=False)
    assert p.returncode == 2 and "exists: pass --resume" in p.stderr, p.stderr
    p = cli("info", f"s3://{BUCKET}/nothing.zarr", "--storage-options", json.dumps(s3), check=False)
    assert p.returncode == 2 and "nothing.zarr: no label store here" in p.stderr and "Traceback" not in p.stderr
    p = cli("info", url, "--storage-options", "{not json", check=False)
    assert p.returncode == 2 and "--storage-options" in p.stderr and "Traceback" not in p.stderr


@pytest.fixture
def s3_configured(s3):
    """storage options as fsspec configuration of this process (what --storage-options does)."""
    saved = dict(fsspec.config.conf.get("s3", {}))
    location.configure("s3://", s3)
    yield s3
    fsspec.config.conf["s3"] = saved


def test_half_created_store_is_refused_or_recreated(s3_configured, source, teacher):
    url = f"s3://{BUCKET}/half.zarr"
    state = {}

    def build(at):
        writer.create(at, [], {"task": "test"}, chunk_rows=8, shard_rows=8, epoch_groups=1)
        if state.get("crash"):
            raise KeyboardInterrupt("killed while creating")

    state["crash"] = True
    with pytest.raises(KeyboardInterrupt):
        writer.open_or_create(url, build, lambda g: None)
    assert location.group_exists(url)  # something is there, in state "creating"
    with pytest.raises(StoreError, match="interrupted while it was being created: pass --overwrite"):
        writer.open_or_create(url, build, lambda g: None, resume=True)
    with pytest.raises(StoreError, match="no finished store appeared"):
        writer.wait_for_store(url, timeout=0.5, poll=0.1)
    state["crash"] = False
    group = writer.open_or_create(url, build, lambda g: None, overwrite=True)
    assert group.attrs["state"] == "running"
    assert writer.wait_for_store(url).attrs["state"] == "running"


def test_memory_url_store_equals_local(base_store, source, teacher):
    url = "memory://labelstore-test/labels.zarr"
    try:
        stats = teach_store(url, source, teacher)
        assert stats["complete"]
        store = labelstore.open(url)
        assert_same_arrays(read_arrays(base_store), {n: a[...] for n, a in iter_arrays(store.group)})
        assert store.bytes_per_view() > 0
        with pytest.raises(StoreError, match="exists: pass --resume"):
            teach_store(url, source, teacher)
    finally:
        location.remove(url)
