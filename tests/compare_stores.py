"""Are two label stores equal, array by array and attribute by attribute? And: do two builds of
labelstore write equal stores for the same `labelstore teach` arguments?

    python tests/compare_stores.py A.zarr B.zarr
        prints every difference (exit status 1 if any): group attributes, and per array its
        metadata (shape, dtype, chunks, shards, codecs, dimension names, attributes) and its values
        (bitwise: NaN == NaN, -0 != +0). Ignored: the timestamps `created` / `completed` (at any depth:
        the integrity attribute holds a checksum of each attribute).

    python tests/compare_stores.py --before OLD/bin/labelstore --after NEW/bin/labelstore --work DIR
        writes small datasets and teacher checkpoints into DIR (once), runs both executables'
        `teach` with the same arguments for each case of CASES (classification, videoqa, and the
        three retrieval similarity modes) and compares each pair of stores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

IGNORED_ATTRS = ("created", "completed")  # wall-clock timestamps


def _diff(x, y, path: str) -> list[str]:
    """Paths (a.b.c) where the JSON values x and y differ, skipping keys named in IGNORED_ATTRS at any depth."""
    if isinstance(x, dict) and isinstance(y, dict):
        return [d for k in sorted(set(x) | set(y)) if k not in IGNORED_ATTRS
                for d in _diff(x.get(k), y.get(k), f"{path}.{k}" if path else str(k))]
    return [] if x == y else [f"{path}: {json.dumps(x)[:200]} != {json.dumps(y)[:200]}"]


def _arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out = {}
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            out.update(_arrays(member, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = member
    return out


def _same_values(x: np.ndarray, y: np.ndarray) -> bool:
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype.kind in "OTU":
        return x.tolist() == y.tolist()
    return np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8))


def compare(a: str, b: str) -> list[str]:
    """The differences between the stores at paths a and b (empty: equal)."""
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    diffs = []
    diffs += [f"attribute {d}" for d in _diff(ga.attrs.asdict(), gb.attrs.asdict(), "")]
    arr_a, arr_b = _arrays(ga), _arrays(gb)
    if sorted(arr_a) != sorted(arr_b):
        diffs.append(f"arrays: {sorted(arr_a)} != {sorted(arr_b)}")
    for name in sorted(set(arr_a) & set(arr_b)):
        x, y = arr_a[name], arr_b[name]
        meta = _diff(json.loads(json.dumps(x.metadata.to_dict(), default=str)),
                     json.loads(json.dumps(y.metadata.to_dict(), default=str)), "")
        if meta:
            diffs += [f"{name} metadata {d}" for d in meta]
        elif not _same_values(x[...], y[...]):
            diffs.append(f"{name}: values differ")
    return diffs


def prepare(work: Path) -> dict[str, Path]:
    """Small datasets and teacher checkpoints under `work` (written once, shared by both builds)."""
    import torch

    from labelstore.pipeline import builtin_video as bv
    from labelstore.pipeline.images import make_shapes_dataset
    from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_captions, read_questions
    from labelstore.trainers.models import build_model
    from labelstore.trainers.retrieval_cli import STUDENT_SPEC, TEACHER_SPEC, save_retrieval_checkpoint
    from labelstore.trainers.retrieval_models import CrossModalTeacher, HolisticStudent
    from labelstore.trainers.spec import save_checkpoint
    from labelstore.trainers.videoqa_models import VideoQAClassifier

    p = {"shapes": work / "shapes" / "train", "cls_teacher": work / "cls_teacher.pt", "vqa": work / "vqa",
         "vqa_teacher": work / "vqa_teacher.pt", "ret": work / "ret", "ret_teacher": work / "ret_teacher.pt",
         "ret_dual": work / "ret_dual.pt"}
    if (work / "ready").exists():
        return p
    work.mkdir(parents=True, exist_ok=True)
    make_shapes_dataset(work / "shapes", n_train=40, n_test=2, seed=0, min_size=20, max_size=40)
    torch.manual_seed(0)
    model = build_model("cnn-tiny", num_classes=10, dropout=0.3)
    save_checkpoint(p["cls_teacher"], model, "cnn-tiny", {"num_classes": 10, "dropout": 0.3})

    d = bv.make_videoqa_dataset(p["vqa"], n_train=12, n_test=2, frames=8, size=32, seed=0)
    qs = read_questions(d["questions_train"])
    tok = Tokenizer.build(q.question for q in qs)
    vocab = AnswerVocab.build(a for q in qs for a in (q.answers or [q.answer]))
    kw = dict(num_tokens=len(tok), num_answers=len(vocab), dim=16, width=8, num_frames=8, frame_size=32, dropout=0.3,
              question_encoder="mean")
    torch.manual_seed(0)
    save_checkpoint(p["vqa_teacher"], VideoQAClassifier(**kw), "labelstore.trainers.videoqa_models:VideoQAClassifier", kw,
                    extra={"tokenizer": tok.to_json(), "vocab": vocab.to_json(), "num_frames": 8, "frame_size": 32})

    d = bv.make_retrieval_dataset(p["ret"], n_train=12, n_test=2, frames=8, size=32, seed=1)
    tok = Tokenizer.build(c.text for c in read_captions(d["captions_train"]))
    torch.manual_seed(0)
    kw = {"vocab_size": len(tok), "dim": 32, "frame_size": 32, "num_frames": 8}
    save_retrieval_checkpoint(p["ret_teacher"], CrossModalTeacher(**kw), TEACHER_SPEC, kw, tok, 8, 32)
    kw = {"vocab_size": len(tok), "dim": 32}
    save_retrieval_checkpoint(p["ret_dual"], HolisticStudent(**kw), STUDENT_SPEC, kw, tok, 8, 32)
    (work / "ready").write_text("")
    return p


def cases(p: dict[str, Path]) -> dict[str, list[str]]:
    """name -> `labelstore teach` arguments (without --out)."""
    cls = ["--data", str(p["shapes"]), "--teacher", str(p["cls_teacher"]), "--epochs", "3", "--top-k", "3",
           "--mc-passes", "2", "--batch-size", "8", "--shard-samples", "16", "--chunk-samples", "8", "--image-size", "16",
           "--policy", "crop-flip-jitter", "--device", "cpu", "--workers", "1"]
    vqa = ["--task", "videoqa", "--data", str(p["vqa"] / "videos"), "--questions", str(p["vqa"] / "questions_train.jsonl"),
           "--teacher", str(p["vqa_teacher"]), "--epochs", "2", "--mc-passes", "4", "--batch-size", "4"]
    ret = ["--task", "retrieval", "--data", str(p["ret"] / "videos"), "--captions", str(p["ret"] / "captions_train.jsonl"),
           "--epochs", "2", "--batch-size", "4"]
    return {
        "classification": [*cls, "--seed", "5"],
        "classification-params-groups": [*cls, "--seed", str(2**63 - 2), "--store-params", "--views-per-decode", "2"],
        "videoqa": [*vqa, "--seed", "1"],
        "videoqa-topk": [*vqa, "--seed", str(2**63 - 1), "--top-k", "5"],
        "retrieval-dense": [*ret, "--teacher", str(p["ret_teacher"]), "--similarity-mode", "dense", "--seed", "3"],
        "retrieval-batches": [*ret, "--teacher", str(p["ret_teacher"]), "--similarity-mode", "batches"],
        "retrieval-embeddings": [*ret, "--teacher", str(p["ret_dual"]), "--similarity-mode", "embeddings"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stores", nargs="*", help="two stores to compare")
    ap.add_argument("--before", help="labelstore executable of the old build")
    ap.add_argument("--after", help="labelstore executable of the new build")
    ap.add_argument("--work", type=Path, help="folder for the data, checkpoints and stores")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    a = ap.parse_args()
    if a.stores:
        diffs = compare(*a.stores)
        print("\n".join(diffs) or "equal")
        return 1 if diffs else 0
    p = prepare(a.work)
    bad = 0
    for name, args in cases(p).items():
        if a.only and name not in a.only:
            continue
        outs = []
        for label, exe in (("before", a.before), ("after", a.after)):
            out = a.work / f"{name}.{label}.zarr"
            if not (out / "zarr.json").exists():
                subprocess.run([exe, "teach", *args, "--out", str(out), "--quiet", "--allow-untrained-teacher"],
                               check=True, stdout=subprocess.DEVNULL)
            outs.append(str(out))
        diffs = compare(*outs)
        bad += bool(diffs)
        print(f"{name}: {'equal' if not diffs else 'DIFFERENT'} ({len(_arrays(zarr.open_group(outs[0], mode='r')))} arrays)")
        for d in diffs:
            print("   ", d)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
