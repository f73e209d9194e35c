"""Bytes per view and codec error of VideoQA token features (`teach --task videoqa --features tokens`).

    python tools/videoqa_token_bytes.py OUT [--teacher-epochs 10] [--store-epochs 2]

Builds the built-in VideoQA data of `labelstore demo --task videoqa` (400 train questions, 16-frame clips,
32 px) in OUT, trains the built-in teacher (videoqa_teacher: D = 64, m = 8 frames) with CE, writes one
store per codec (float16, int8) with `--features tokens` (the per-frame tokens before temporal pooling,
[Q, D] = [8, 64] per view), and prints JSON per codec: stored bytes per view of features/values and
features/scale (on disk), the raw bytes, and the codec's error against the float32 tokens recomputed on
the stored views (relative L2 error per view ||f - f~|| / ||f|| over its Q*D values, mean and max;
lowest cosine). Also the teacher's test accuracy and the CPU seconds (time.process_time) of each step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import labelstore
from labelstore.pipeline import features
from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
from labelstore.pipeline.video import FrameSampler, VideoPolicy
from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions
from labelstore.trainers.videoqa import evaluate_videoqa, train_videoqa_classifier
from labelstore.trainers.videoqa_demo import DEMO, _setup
from labelstore.trainers.videoqa_models import videoqa_teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--store-epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    c0 = time.process_time()
    data, videos, tok, vocab = _setup(args.out, DEMO["n_train"], DEMO["n_test"], DEMO["frames"], DEMO["size"], 0)
    m, fs = DEMO["num_frames"], (DEMO["size"], DEMO["size"])
    sampler, cache = FrameSampler(num_frames=m), ClipCache(videos)
    qa = prepare_questions(videos, data["questions_train"], tok, vocab, strict_answers=False)
    torch.manual_seed(0)
    teacher = videoqa_teacher(len(tok), len(vocab), num_frames=m, frame_size=DEMO["size"])
    train_videoqa_classifier(teacher, videos, qa, sampler, epochs=args.teacher_epochs, seed=1, frame_size=fs,
                             cache=cache, batch_size=DEMO["batch_size"])
    acc = evaluate_videoqa(teacher, videos, data["questions_test"], vocab, tokenizer=tok, num_frames=m, frame_size=fs,
                           cache=cache)
    out = {"teacher_acc_annotated": acc["acc_annotated"], "teacher_cpu_s": time.process_time() - c0,
           "questions": len(qa), "codecs": {}}
    got: list[torch.Tensor] = []
    teacher.tokens.register_forward_hook(lambda mod, a, y: got.append(y.detach()))
    for codec in features.CODECS:
        c1 = time.process_time()
        path = args.out / f"tokens-{codec}.zarr"
        teach_videoqa(str(path), videos, data["questions_train"], tok, vocab, teacher, sampler,
                      VideoQATeachConfig(epochs=args.store_epochs, seed=0, mc_passes=0, batch_size=256, shard_rows=512,
                                         frame_size=fs, strict_answers=False, features="tokens", feature_codec=codec),
                      overwrite=True)
        cpu = time.process_time() - c1
        store = labelstore.open(str(path))
        table = {r["name"]: r["bytes_per_view"] for r in store.bytes_per_view_table()}
        Q, D = store.attrs["features"]["tokens"], store.attrs["features"]["dim"]
        errs, coss = [], []
        policy = VideoPolicy(sampler=sampler, frame_size=fs)
        rows = np.arange(len(qa))
        for e in range(store.epochs):
            fi = store.read_array("aug/frames/indices", epoch=e)
            got.clear()
            teacher.eval()
            with torch.no_grad():
                for b in range(0, len(rows), 256):
                    r = rows[b:b + 256]
                    x, vi = cache.shared_views(policy, qa.video_rows[r], fi[r])
                    teacher(x, torch.as_tensor(qa.q_ids[r]), torch.as_tensor(qa.q_mask[r]), vi)
            f = torch.cat(got).numpy().reshape(len(rows), -1)
            err, cos = features.reconstruction_error(f, features.read_features(store, e, rows).reshape(len(rows), -1))
            errs.append(err)
            coss.append(cos)
        err, cos = np.concatenate(errs), np.concatenate(coss)
        stored = table["features/values"] + table.get("features/scale", 0.0)
        out["codecs"][codec] = {"Q": Q, "D": D, "stored_bytes_per_view": stored,
                                "raw_bytes_per_view": Q * D * (2 if codec == "float16" else 1) + (4 if codec == "int8" else 0),
                                "rel_l2_mean": float(err.mean()), "rel_l2_max": float(err.max()),
                                "cosine_min": float(cos.min()), "teach_cpu_s": cpu}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
