"""`labelstore verify`: is the store exactly what the teacher said about exactly those pixels?

Checks, in order:
  1. the dataset fingerprint matches the data given;
  2. every object the store's manifest lists is there, with its recorded size and crc32c; the
     root attributes and every array's zarr.json match their recorded checksums; every chunk
     and shard index passes its crc32c (every shard of every array is decoded);
  3. for n random (epoch, sample) views, the replayed input's crc32c equals the stored
     view_digest (pixel identity, no teacher needed);
  Damage does not stop it: every damaged array and row range is listed (chunk_problems), views
  whose records cannot be read are listed (replay_problems), and the other checks carry on.
  4. with a teacher: its outputs on the replayed views give the stored top-k classes, with
     probabilities within the stored rounding (|p - stored| <= (2^-(b+1) + 2^-10) max(p, 2^-14) + 1e-4,
     b = the array's mantissa_bits, 10 when absent).
  5. a store with features (teach --features): the stored classifier matches its recorded hash
     (features.load_head) and, with a teacher, the teacher's own classifier; with a teacher, the
     features re-computed on the replayed views match the stored ones within the codec's bound plus
     a re-computation slack (pipeline/features.py, `within_bound`):
       |f - f~| <= error_bound(f, codec) + 2^-9 max_j |f_j|   for every value of every checked view.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from labelstore.errors import StoreError
from labelstore.integrity import verify_chunks, verify_objects, view_check

from . import features
from .replay import check_data, open_data, replay_views, store_policy
from .teacher import pick_device


def verify(store, data, *, teacher: torch.nn.Module | None = None, samples: int = 64, seed: int = 0,
           device: str | None = None) -> dict:
    """Returns a report dict; `report["ok"]` is False when any check failed."""
    check_data(store, data)
    decoded = [p for p in verify_chunks(store.group) if "is missing (the store says" not in p]  # listed below
    failing = {p.split("[")[0] for p in decoded}  # arrays whose chunks fail their own checksums
    listed = [p for p in verify_objects(store.group)
              if not ("differs from the one written" in p and p.split(" ")[1] in failing)]  # said once, by the chunk
    report: dict = {"chunk_problems": listed + decoded, "replay_problems": []}
    g = np.random.default_rng(seed)
    try:
        skipped = store.group["skipped"][:]
    except Exception:  # noqa: BLE001 - damaged; already listed in chunk_problems
        skipped = np.zeros(store.num_samples, bool)
    candidates = np.nonzero(~skipped)[0]
    n = min(samples, store.epochs * len(candidates))
    epochs = g.integers(0, store.epochs, n)
    ids = candidates[g.integers(0, len(candidates), n)]
    digests_ok, checked = 0, 0
    policy = store_policy(store)
    topk_mismatch, value_err = 0, 0.0
    dev = pick_device(device)
    if teacher is not None:
        teacher = teacher.to(dev).eval()
    feat = store.attrs.get("features")
    hook = features.FeatureHook(teacher, feat["name"], store.num_classes) if feat and teacher is not None else None
    fstats = {"features_checked": 0, "feature_mismatches": 0, "max_feature_rel_l2": 0.0, "min_feature_cosine": 1.0}
    if feat:
        report["head_problems"] = head_problems(store, teacher)
    for e in np.unique(epochs):
        idx = ids[epochs == e]
        try:
            views = replay_views(store, data, int(e), idx, policy)
            rec = store.read(int(e), idx, include_rows=False)
        except StoreError as err:  # a damaged shard: list it, go on with the other epochs
            report["replay_problems"].append(f"epoch {int(e)} ({len(idx)} views not checked): {err}")
            continue
        if "view_digest" in rec:
            digests_ok += int((view_check(views.digests()) == rec["view_digest"]).sum())
            checked += len(idx)
        if teacher is not None:
            with torch.inference_mode(), hook.capture() if hook else contextlib.nullcontext():
                p = teacher(policy.to_input(views, dev)).float().softmax(1).cpu()
            if hook is not None:
                try:
                    stored = features.read_features(store, int(e), idx)
                except StoreError as err:
                    report["replay_problems"].append(f"epoch {int(e)}: features not checked: {err}")
                else:
                    check_features(hook.take().cpu().numpy(), stored, feat["codec"], fstats)
            K = store.top_k
            stored_v = torch.from_numpy(rec["topk_values"].astype(np.float32))
            stored_i = torch.from_numpy(rec["topk_indices"].astype(np.int64))
            got = p.gather(1, stored_i)  # the teacher's probabilities of the stored classes
            bits = int(store.arrays["topk_values"].attrs.get("mantissa_bits", 10))
            tol = (2.0 ** -(bits + 1) + 2.0**-10) * torch.maximum(got, torch.full_like(got, 2.0**-14)) + 1e-4
            # a stored class set is right if its probabilities match and no other class beats the k-th
            kth = got[:, K - 1 : K]
            others = p.scatter(1, stored_i, -1.0)
            bad = ((got - stored_v).abs() > tol).any(1) | (others > kth + tol[:, K - 1 : K]).any(1)
            topk_mismatch += int(bad.sum())
            value_err = max(value_err, float((got - stored_v).abs().max()))
    report.update({"views_checked": int(n), "digests_checked": checked, "digests_equal": digests_ok})
    if teacher is not None:
        report.update({"teacher_mismatches": topk_mismatch, "max_abs_prob_diff": value_err})
    if hook is not None:
        report.update(fstats)
    report["ok"] = (not report["chunk_problems"] and not report["replay_problems"] and digests_ok == checked
                    and report.get("teacher_mismatches", 0) == 0 and report.get("feature_mismatches", 0) == 0
                    and not report.get("head_problems"))
    return report


SLACK = 2.0**-9  # re-computation slack of the feature check, relative to the view's max |f|


def check_features(f: np.ndarray, stored: np.ndarray, codec: str, stats: dict) -> None:
    """Add to `stats` the views whose stored features (dequantised, [n, D]) miss the re-computed f [n, D]
    by more than error_bound + SLACK * max|f| anywhere; their worst relative L2 error and cosine."""
    tol = features.error_bound(f, codec) + SLACK * np.abs(f).max(1, keepdims=True)
    bad = (np.abs(f - stored) > tol).any(1)
    err, cos = features.reconstruction_error(f, stored)
    stats["features_checked"] += len(f)
    stats["feature_mismatches"] += int(bad.sum())
    stats["max_feature_rel_l2"] = max(stats["max_feature_rel_l2"], float(err.max()))
    stats["min_feature_cosine"] = min(stats["min_feature_cosine"], float(cos.min()))


def head_problems(store, teacher: torch.nn.Module | None) -> list[str]:
    """The stored classifier against its hash and, given the teacher, against the teacher's classifier."""
    head = store.attrs["features"].get("head")
    if not head:
        return []
    try:
        lin = features.load_head(store)
    except StoreError as err:
        return [str(err)]
    if teacher is None:
        return []
    found = features.classifier(teacher, store.num_classes)
    if found is None:
        return [f"the teacher has no classifier ({store.num_classes} outputs) to compare the stored one with"]
    w, b = features.head_arrays(found[1])
    if not (np.array_equal(w, lin.weight.detach().numpy()) and np.array_equal(b, lin.bias.detach().numpy())):
        return [f"{features.HEAD_WEIGHT}, {features.HEAD_BIAS}: differ from the teacher's classifier {found[0]!r}"]
    return []


def verify_command(store, data_spec: str, **kwargs) -> dict:
    """`labelstore verify STORE --data SPEC`: verify(store, replay.open_data(store, SPEC), **kwargs)."""
    return verify(store, open_data(store, data_spec), **kwargs)
