"""`labelstore experiment videoqa`: RADI ablations on the large-vocabulary VideoQA data, N seeds per arm.

Setup, made once per output directory and reused by every arm and seed (and by a rerun), from
RECIPE (keyword overrides: --recipe):

    data     make_videoqa_dataset(vocab="large", n_train=n_teacher): 400 compositional answers,
             several acceptable answers per question (`answer` = one of them drawn at random: the
             student's label). The student's training set is the questions of the first n_train
             videos (questions_student.jsonl); the teacher's is all n_teacher videos (a superset).
    teacher  VideoQAClassifier(dim=teacher_dim, width=teacher_width, GRU question encoder), trained
             for teacher_epochs (torch seed 0) with CE against every acceptable answer
             (train_videoqa_classifier(all_answers=vocab)): wider than the student, on more
             videos, with fuller labels -- a teacher clearly above the CE student
    store    teach_videoqa on the student's questions: store_epochs epochs of random-offset frames,
             top_k = A (the teacher's full ranking over all 400 answers) and mc_passes MC-dropout
             passes of the answer head

Arms train the built-in student (videoqa_student: D = 32, conv width 16, mean-pooled question
words) for student_epochs on the same replayed frames; seed s fixes the student's initialisation
(torch.manual_seed(s)) and the batch order and cold-list draws (train_videoqa_student(seed=s)) in
every arm, so the arms are paired by seed:

    ce          L_cls only (no teacher)
    kd          L_cls + alpha * KL(teacher || student) over the full stored distribution
    radi-pair   L_cls + alpha * L_pair               (adaptive Sinkhorn margins from the MC uncertainty)
    radi-list   L_cls + alpha * L_list               (hot list + cold list over the full ranking, Exp law)
    radi-both   L_cls + alpha * (L_pair + L_list)
    radi-fixed  radi-both with fixed margins (M = margin for every pair)

alpha = RADI_ALPHA for every arm. Metric: acc_any, the fraction of test questions whose argmax
answer is one of the question's acceptable answers (a question has several; the training label is
one of them at random, so acc_annotated would count a correct answer as wrong by chance).
Statistics: labelstore.trainers.experiment.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from labelstore.errors import ConfigError

from .experiment import check_arms, disk_bytes, read_setup, with_recipe, write_setup

METRIC = "acc_any"
REFERENCE = "ce"
ARMS = {
    "ce": {"method": "ce"},
    "kd": {"method": "kd"},
    "radi-pair": {"method": "radi", "rank": "pairwise", "margins": "adaptive"},
    "radi-list": {"method": "radi", "rank": "listwise"},
    "radi-both": {"method": "radi", "rank": "both", "margins": "adaptive"},
    "radi-fixed": {"method": "radi", "rank": "both", "margins": "fixed"},
}
DEFAULT_ARMS = list(ARMS)

RECIPE = dict(n_train=200, n_teacher=1500, n_test=300, frames=16, size=32, num_frames=8, data_seed=0,
              teacher_dim=64, teacher_width=32, teacher_epochs=20, store_epochs=6, mc_passes=8,
              student_epochs=6, batch_size=64, hot_k=10, cold_n=100, margin=0.1)


def teacher_line(meta: dict) -> str:
    r = meta["recipe"]
    return (f"teacher (VideoQAClassifier dim {r['teacher_dim']}, width {r['teacher_width']}, GRU; {r['n_teacher']} "
            f"videos, all answers, {r['teacher_epochs']} epochs) test acc_any: {meta['teacher_acc_any']:.3f}  "
            f"acc_annotated: {meta['teacher_acc_annotated']:.3f}; store {meta['store_bytes_per_view']:.0f} bytes/view "
            f"(K = {meta['top_k']} of {meta['num_answers']} answers, T = {meta['recipe']['mc_passes']})")


def setup(out: str, *, progress: bool = False, echo=print, **recipe) -> dict:
    """Data, teacher and store under `out` from RECIPE (+ `recipe` overrides), made once: an existing
    setup.json is reused."""
    from labelstore.pipeline.builtin_video import large_answer_vocabulary, make_videoqa_dataset
    from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
    from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_questions
    from labelstore.pipeline.video import FrameSampler, VideoFolder
    from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions

    from .videoqa import evaluate_videoqa, train_videoqa_classifier
    from .videoqa_cli import save_videoqa_checkpoint
    from .videoqa_models import VideoQAClassifier

    meta = read_setup(out)
    if meta is not None:
        return meta
    r = with_recipe(RECIPE, recipe)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    if r["n_teacher"] < r["n_train"]:
        raise ConfigError(f"n_teacher = {r['n_teacher']} must be >= n_train = {r['n_train']} (the teacher's videos "
                          f"include the student's)")
    data = make_videoqa_dataset(Path(out) / "data", n_train=r["n_teacher"], n_test=r["n_test"], frames=r["frames"],
                                size=r["size"], seed=r["data_seed"], vocab="large")
    student_q = os.path.join(out, "questions_student.jsonl")
    with open(data["questions_train"]) as f, open(student_q, "w") as g:  # the first n_train videos' questions
        g.writelines(line for line in f if json.loads(line)["video_id"] < f"train_{r['n_train']:05d}")
    videos = VideoFolder(data["videos"])
    tokenizer = Tokenizer.build(q.question for q in read_questions(data["questions_train"]))
    vocab = AnswerVocab.build(large_answer_vocabulary())
    m, fs = r["num_frames"], (r["size"], r["size"])
    cache = ClipCache(videos)
    teacher_qa = prepare_questions(videos, data["questions_train"], tokenizer, vocab)
    test_qa = prepare_questions(videos, data["questions_test"], tokenizer, vocab)
    n_student = len(read_questions(student_q))
    echo(f"data: {len(teacher_qa)} teacher / {n_student} student / {len(test_qa)} test questions, {len(vocab)} answers "
         f"({time.perf_counter() - t0:.1f}s)")

    torch.manual_seed(0)
    kwargs = dict(num_tokens=len(tokenizer), num_answers=len(vocab), dim=r["teacher_dim"], width=r["teacher_width"],
                  num_frames=m, frame_size=r["size"], dropout=0.3, question_encoder="gru")
    teacher = VideoQAClassifier(**kwargs)
    tt = train_videoqa_classifier(teacher, videos, teacher_qa, FrameSampler(num_frames=m), epochs=r["teacher_epochs"],
                                  batch_size=r["batch_size"], seed=1, frame_size=fs, cache=cache, all_answers=vocab)
    acc = evaluate_videoqa(teacher, videos, test_qa, vocab, num_frames=m, frame_size=fs, cache=cache)
    echo(f"teacher: acc_any {acc['acc_any']:.3f}, acc_annotated {acc['acc_annotated']:.3f} ({tt['seconds']:.1f}s)")
    ckpt = os.path.join(out, "teacher.pt")
    save_videoqa_checkpoint(ckpt, teacher, "labelstore.trainers.videoqa_models:VideoQAClassifier", kwargs,
                            tokenizer, vocab, m, r["size"])

    store = os.path.join(out, "videoqa.zarr")
    st = teach_videoqa(store, videos, student_q, tokenizer, vocab, teacher, FrameSampler(num_frames=m),
                       VideoQATeachConfig(epochs=r["store_epochs"], seed=0, top_k=None, mc_passes=r["mc_passes"],
                                          batch_size=256, shard_rows=512, frame_size=fs), overwrite=True)
    views, size = st["views"], disk_bytes(store)
    meta = {"recipe": r, "videos": str(data["videos"]), "questions_train": student_q, "questions_teacher": str(data["questions_train"]),
            "questions_test": str(data["questions_test"]), "teacher": ckpt, "store": store,
            "teacher_acc_any": acc["acc_any"], "teacher_acc_annotated": acc["acc_annotated"],
            "teacher_seconds": tt["seconds"], "num_answers": len(vocab), "top_k": st["top_k"], "views": views,
            "store_bytes": size, "store_bytes_per_view": size / views}
    echo(f"store: {views} views, K = {st['top_k']}, T = {r['mc_passes']}, {meta['store_bytes_per_view']:.0f} bytes/view "
         f"({st['seconds']:.1f}s)")
    write_setup(out, meta)
    return meta


def make_arms(meta: dict, names: list[str], progress: bool = False) -> dict:
    """arm name -> (seed -> {"acc_any", "acc_annotated", "seconds"}) over the setup `meta`."""
    import labelstore
    from labelstore.pipeline.text import AnswerVocab, Tokenizer
    from labelstore.pipeline.video import VideoFolder
    from labelstore.pipeline.videoqa_data import ClipCache, prepare_questions

    from .videoqa import RADI_ALPHA, evaluate_videoqa, train_videoqa_student
    from .videoqa_models import videoqa_student

    check_arms(names, ARMS)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    r = meta["recipe"]
    store = labelstore.open(meta["store"])
    vocab, tokenizer = AnswerVocab.from_json(store.attrs["vocab"]), Tokenizer.from_json(store.attrs["tokenizer"])
    videos = VideoFolder(meta["videos"])
    cache = ClipCache(videos)  # decoded clips shared by every run
    test_qa = prepare_questions(videos, meta["questions_test"], tokenizer, vocab)
    m, fs = r["num_frames"], (r["size"], r["size"])

    def arm(name: str):
        spec = ARMS[name]

        def run(seed: int) -> dict:
            torch.manual_seed(seed)
            student = videoqa_student(len(tokenizer), len(vocab), num_frames=m, frame_size=r["size"])
            res = train_videoqa_student(student, store, videos, meta["questions_train"], alpha=RADI_ALPHA,
                                        hot_k=r["hot_k"], cold_n=r["cold_n"], margin=r["margin"],
                                        epochs=r["student_epochs"], batch_size=r["batch_size"], seed=seed,
                                        cache=cache, progress=progress, **spec)
            acc = evaluate_videoqa(student, videos, test_qa, vocab, num_frames=m, frame_size=fs, cache=cache)
            return {"acc_any": acc["acc_any"], "acc_annotated": acc["acc_annotated"], "seconds": res["seconds"]}

        return run

    return {n: arm(n) for n in names}
