"""`labelstore verify` on a VideoQA store: checksums, and with a teacher its answers and tokens again.

Checks, in order (the classification verify's, pipeline/verify.py, where the task allows):
  1. the videos and the questions file (the store's dataset.questions_path) are the ones the store was
     built from (dataset digest);
  2. every object of the manifest, every metadata checksum and every chunk's crc32c (verify.chunk_problems);
  3. with a teacher, for n random (epoch, question) views replayed from aug/frames/indices: its answer
     probabilities give the stored top-K within the stored rounding (verify.topk_mismatches), and, in a
     store with features (`teach --task videoqa --features NAME`), its token outputs [Q, D] match the
     stored ones within the codec's bound plus the re-computation slack, over the view's Q*D values:
       |f - f~| <= error_bound(f, codec) + 2^-9 max_j |f_j|      (verify.check_features)
  A VideoQA store has no view digests (digests_checked = 0).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from labelstore.errors import ConfigError, StoreError

from . import features
from .replay import check_data
from .teach_videoqa import mc_forward_qa
from .teacher import pick_device
from .text import AnswerVocab, Tokenizer
from .verify import check_features, chunk_problems, topk_mismatches
from .video import VideoFolder, VideoPolicy
from .videoqa_data import ClipCache, QAReplay, prepare_questions


def verify_videoqa(store, videos, questions, *, teacher: torch.nn.Module | None = None, samples: int = 64,
                   seed: int = 0, device: str | None = None) -> dict:
    """Returns a report dict; `report["ok"]` is False when any check failed. questions: the questions file."""
    a = store.attrs
    vocab, tokenizer = AnswerVocab.from_json(a["vocab"]), Tokenizer.from_json(a["tokenizer"])
    tc = a["teach_config"]
    qa = prepare_questions(videos, questions, tokenizer, vocab, strict_answers=tc["strict_answers"],
                           max_len=tc["max_len"])
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    check_data(store, QAReplay(videos, qa, policy, batch_size=1, seed=0))
    report: dict = {"chunk_problems": chunk_problems(store), "replay_problems": []}
    g = np.random.default_rng(seed)
    n = min(samples, store.epochs * store.num_samples)
    epochs, ids = g.integers(0, store.epochs, n), g.integers(0, store.num_samples, n)
    feat = a.get("features")
    dev = pick_device(device)
    hook = None
    if teacher is not None:
        teacher = teacher.to(dev).eval()
        hook = features.FeatureHook(teacher, feat["name"], store.num_classes, tokens=True) if feat else None
    cache = ClipCache(videos)
    mismatches, value_err = 0, 0.0
    fstats = {"features_checked": 0, "feature_mismatches": 0, "max_feature_rel_l2": 0.0, "min_feature_cosine": 1.0}
    for e in np.unique(epochs) if teacher is not None else []:
        idx = ids[epochs == e]
        try:
            rec = store.read(int(e), idx, include_rows=False)
            stored = features.read_features(store, int(e), idx) if hook else None  # [n, Q, D]
        except StoreError as err:  # a damaged shard: list it, go on with the other epochs
            report["replay_problems"].append(f"epoch {int(e)} ({len(idx)} views not checked): {err}")
            continue
        x, vi = cache.shared_views(policy, qa.video_rows[idx], rec["frames/indices"])  # frames [n, m]
        with hook.capture() if hook else contextlib.nullcontext():
            logits, _ = mc_forward_qa(teacher, x.to(dev), torch.as_tensor(qa.q_ids[idx], device=dev),
                                      torch.as_tensor(qa.q_mask[idx], device=dev), 0, 0, video_index=vi.to(dev))
        bad, err = topk_mismatches(store, logits.float().softmax(1).cpu(), rec)
        mismatches, value_err = mismatches + bad, max(value_err, err)
        if hook is not None:
            f = hook.take().cpu().numpy()  # [n, Q, D]
            check_features(f.reshape(len(idx), -1), stored.reshape(len(idx), -1), feat["codec"], fstats)
    report.update({"views_checked": int(n), "digests_checked": 0, "digests_equal": 0})
    if teacher is not None:
        report.update({"teacher_mismatches": mismatches, "max_abs_prob_diff": value_err})
    if hook is not None:
        report.update(fstats)
    report["ok"] = (not report["chunk_problems"] and not report["replay_problems"]
                    and report.get("teacher_mismatches", 0) == 0 and report.get("feature_mismatches", 0) == 0)
    return report


def verify_command(store, data_spec: str, **kwargs) -> dict:
    """`labelstore verify STORE --data VIDEO_DIR`: the questions are the store's dataset.questions_path."""
    path = store.attrs["dataset"].get("questions_path")
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{store.path}: the questions file the store was built from ({path}) is not there; "
                          "verify reads it to replay the questions")
    return verify_videoqa(store, VideoFolder(data_spec), path, **kwargs)
