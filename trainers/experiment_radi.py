"""`labelstore experiment radi`: a VideoQA testbed where RADI's ranking terms can show what they do.

Setup, made once per output directory and reused by every arm and seed, from RECIPE (--recipe):

    data     make_videoqa_dataset(vocab="large") clips (4 shapes each, 70 % with two shapes moving
             the same way), keeping two question types, with the size word dropped from the answers:
               "describe one object in the video."  -> "red circle moving left"  (75 answers; every
                                                       object of the clip is correct: up to 4)
               "which object moves D?"              -> "red circle"              (15 answers; 2 correct
                                                       where two shapes move D)
             90 answers; the annotated `answer` is one correct answer drawn at random (the label of
             teacher and student alike), `answers` the full set (used only to score).
    features frozen clip features, plus the question as a bag of words, computed once per view. The
             students': colour-blob statistics per frame and palette colour (area, centroid, spread,
             skewness, fill: clip_features). The teachers' (slot_features, richer, from the same
             views): per colour, those statistics and a 4 x 4 occupancy grid per frame, and the
             centroid's slopes over the frames (motion), mean fill / skewness, presence, max area
    folds    the training clips split at random into teacher_folds (K, default 4) folds (all questions of
             a clip in one fold)
    teacher  FoldTeachers: K SlotQA(hidden = teacher_hidden, dropout 0.3; one head shared by the
             colours, each colour's answers scored from that colour's slot), teacher k trained
             teacher_epochs with CE on the annotated answers of the training questions of the clips
             OUTSIDE fold k (the students' own single-answer labels, no other labels), on teacher_views
             random-offset views per clip. Each training question is labelled by the teacher of its
             clip's fold, one that never saw the clip (cross-fitted, out-of-fold soft labels): a teacher
             labelling its own training questions memorises the one label drawn per question and puts
             its mass there, out of fold it keeps mass on the other correct answers, which is what KD
             (and the ranking terms) can transfer. The teacher's test acc_any is that of the K
             teachers' averaged probabilities.
    store    teach_videoqa (the real teacher stage) on the training questions with the FoldTeachers module
             as its teacher: store_epochs epochs of random-offset frames, top_k = A (full ranking),
             mc_passes MC-dropout passes of the fold's head

Students: FeatureQA(hidden = student_hidden, dropout 0.1), student_epochs over the store's views
(student epoch e reads store epoch e % E: its frames, turned into features, and its targets). Seed s
fixes the initialisation, the batch order and the cold lists in every arm (paired by seed):

    ce                 L_cls only
    kd                 L_cls + KL(teacher || student) (kd_kl, T = 1) on the stored distribution
    pair-adaptive      L_cls + alpha * L_pair, Sinkhorn margins from the MC uncertainty
    pair-fixed         L_cls + alpha * L_pair, the constant margin
    pair-shuffled      L_cls + alpha * L_pair, the Sinkhorn margins shuffled within rows
    listwise           L_cls + alpha * L_list  (ListMLE, hot list + cold list over the full ranking)
    both               L_cls + alpha * (L_pair + L_list), adaptive margins
    both-a0.1/-a0.3    `both` at alpha 0.1 / 0.3

alpha = 1 unless named; the losses are labelstore.trainers.videoqa.rank_loss_radi and radi_objective
(the VideoQA trainer's own). Metric: acc_any (argmax among the question's acceptable answers).
The gate line under the table says whether KD beats CE by >= GATE points: only then can the ranking
arms be read (a teacher that KD cannot use gives the ranking terms nothing to transfer).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


from .experiment import check_arms, read_setup, with_recipe, write_setup
from .radi_folds import FoldTeachers, clip_folds, fold_table

METRIC = "acc_any"
REFERENCE = "ce"
GATE = 0.02  # KD must beat CE by this much (acc_any) before the ranking arms are read
ARMS = {
    "ce": {"method": "ce"},
    "kd": {"method": "kd"},
    "pair-adaptive": {"method": "radi", "rank": "pairwise", "margins": "adaptive"},
    "pair-fixed": {"method": "radi", "rank": "pairwise", "margins": "fixed"},
    "pair-shuffled": {"method": "radi", "rank": "pairwise", "margins": "shuffled"},
    "listwise": {"method": "radi", "rank": "listwise", "margins": "fixed"},
    "both": {"method": "radi", "rank": "both", "margins": "adaptive"},
    "both-a0.3": {"method": "radi", "rank": "both", "margins": "adaptive", "alpha": 0.3},
    "both-a0.1": {"method": "radi", "rank": "both", "margins": "adaptive", "alpha": 0.1},
}
DEFAULT_ARMS = list(ARMS)

RECIPE = dict(n_train=2400, n_test=400, frames=16, size=32, num_frames=8, data_seed=0,
              teacher_hidden=256, teacher_epochs=40, teacher_views=4, teacher_folds=4, store_epochs=4, mc_passes=8,
              student_hidden=32, student_epochs=15, batch_size=64, lr=3e-3, hot_k=10, cold_n=30,
              margin=0.1, epsilon=0.01)
KEEP = ("describe", "object_of_motion")


# --------------------------------------------------------------------------------------
# data, features, model
# --------------------------------------------------------------------------------------


def _drop_size(answer: str) -> str:
    """'big red circle moving left' -> 'red circle moving left' (the built-in sizes are one word)."""
    from labelstore.pipeline.builtin_video import SIZES

    first, _, rest = answer.partition(" ")
    return rest if first in SIZES else answer


def derive_questions(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """The KEEP question types of a built-in large-vocabulary questions file, size words dropped from
    `answer` and `answers` (looks are distinct within a clip, so the sets keep their sizes); returns
    {answer: number of questions annotated with it}."""
    counts: dict[str, int] = {}
    with open(src) as f, open(dst, "w") as g:
        for line in f:
            q = json.loads(line)
            if q["type"] not in KEEP:
                continue
            q["answer"] = _drop_size(q["answer"])
            q["answers"] = sorted({_drop_size(a) for a in q["answers"]})
            counts[q["answer"]] = counts.get(q["answer"], 0) + 1
            g.write(json.dumps(q) + "\n")
    return counts


def testbed_vocabulary() -> list[str]:
    """The 90 answers: 'colour shape moving D' / 'colour shape staying still' (75), 'colour shape' (15)."""
    from labelstore.pipeline.builtin_video import COLOURS, MOTIONS, SHAPES

    looks = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return [f"{lk} " + ("staying still" if m == "static" else f"moving {m}") for lk in looks for m in MOTIONS] + looks


N_CLIP_FEATURES = 7  # per frame and palette colour


def clip_features(frames: torch.Tensor, mean, std, tol: float = 0.15) -> torch.Tensor:
    """Frozen colour-blob features: frames float [V, m, 3, H, W] (normalised by mean, std) ->
    [V, m * C * 7], C = the built-in palette's colours. Per frame and colour c, with the mask
    w = [ ||x - rgb_c / 255|| < tol ] over pixels at coordinates (u, v) in [-1/2, 1/2]^2:
        area a = mean(w); centroid (cu, cv); variances var_u, var_v; skewness of v
        (E[(v - cv)^3] / var_v^1.5: triangles point up); fill = |w| / bounding-box area
    (all 0 where a colour is absent). Two objects of one colour mix their blobs."""
    from labelstore.pipeline.builtin_video import COLOURS

    V, m, _, H, W = frames.shape
    x = frames.flatten(0, 1) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)  # [Vm, 3, H, W]
    pal = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0  # [C, 3]
    w = ((x[:, None] - pal[None, :, :, None, None]).norm(dim=2) < tol).float()  # [Vm, C, H, W]
    v_grid = (torch.arange(H, dtype=torch.float32) + 0.5) / H - 0.5
    u_grid = (torch.arange(W, dtype=torch.float32) + 0.5) / W - 0.5
    n = w.sum((2, 3))  # [Vm, C]
    area, safe = n / (H * W), n.clamp_min(1.0)
    wu, wv = w.sum(2), w.sum(3)  # [Vm, C, W] column counts, [Vm, C, H] row counts
    cu = (wu * u_grid).sum(2) / safe
    cv = (wv * v_grid).sum(2) / safe
    var_u = (wu * (u_grid - cu[..., None]) ** 2).sum(2) / safe
    var_v = (wv * (v_grid - cv[..., None]) ** 2).sum(2) / safe
    skew = (wv * (v_grid - cv[..., None]) ** 3).sum(2) / safe / var_v.clamp_min(1e-6) ** 1.5
    cols, rows = (wu > 0).float(), (wv > 0).float()
    width = (cols * torch.arange(W)).amax(2) - (cols * torch.arange(W) + W * (1 - cols)).amin(2) + 1  # [Vm, C]
    height = (rows * torch.arange(H)).amax(2) - (rows * torch.arange(H) + H * (1 - rows)).amin(2) + 1
    fill = n / (width * height).clamp_min(1.0)
    f = torch.stack([area * 10, cu, cv, var_u * 10, var_v * 10, skew * 0.5, fill], dim=2)  # [Vm, C, 7]
    f = torch.where(n[..., None] > 0, f, torch.zeros_like(f))
    return f.reshape(V, -1)


N_SLOT_FRAME, N_SLOT_CLIP = N_CLIP_FEATURES + 16, 6  # per frame (blob statistics, 4 x 4 grid), per clip


def slot_features(frames: torch.Tensor, mean, std, tol: float = 0.15) -> torch.Tensor:
    """The teacher's richer frozen features, one slot per palette colour: frames float [V, m, 3, H, W] ->
    [V, C, m * 23 + 6]. Per frame: clip_features' 7 blob statistics and the colour's 4 x 4 occupancy grid
    (3 * the fraction of each cell's pixels of the colour); per clip, over the frames where the colour is
    present (pres_t = [a_t > 0], t in [-1, 1]): presence fraction, the least-squares slopes of the centroid
    cu, cv over t (the motion), mean fill, mean skewness, max area (0 for a colour absent everywhere)."""
    from labelstore.pipeline.builtin_video import COLOURS

    V, m, _, H, W = frames.shape
    C = len(COLOURS)
    x = frames.flatten(0, 1) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)  # [Vm, 3, H, W]
    pal = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0  # [C, 3]
    w = ((x[:, None] - pal[None, :, :, None, None]).norm(dim=2) < tol).float()  # [Vm, C, H, W]
    grid = F.adaptive_avg_pool2d(w, 4).reshape(V, m, C, 16) * 3
    blob = clip_features(frames, mean, std, tol).view(V, m, C, N_CLIP_FEATURES)
    pres = (w.sum((2, 3)) > 0).float().view(V, m, C)
    t = torch.linspace(-1, 1, m).view(1, m, 1)
    n_p = pres.sum(1).clamp_min(1)  # [V, C]
    dt = t - ((pres * t).sum(1) / n_p)[:, None]  # [V, m, C]

    def slope(y: torch.Tensor) -> torch.Tensor:  # [V, m, C] -> [V, C]
        dy = y - ((pres * y).sum(1) / n_p)[:, None]
        return (pres * dt * dy).sum(1) / (pres * dt * dt).sum(1).clamp_min(1e-3)

    clip = torch.stack([pres.mean(1), slope(blob[..., 1]), slope(blob[..., 2]), (pres * blob[..., 6]).sum(1) / n_p,
                        (pres * blob[..., 5]).sum(1) / n_p, blob[..., 0].amax(1)], 2)  # [V, C, 6]
    per_frame = torch.cat([blob, grid], 3).permute(0, 2, 1, 3).reshape(V, C, m * N_SLOT_FRAME)
    return torch.cat([per_frame, clip], 2)


def bag_of_words(q_ids: torch.Tensor, q_mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """q_ids int64 [B, L], q_mask bool [B, L] -> [B, num_tokens], the mean one-hot of the words."""
    oh = F.one_hot(q_ids, num_tokens).float() * q_mask[..., None].float()  # [B, L, W]
    return oh.sum(1) / q_mask.sum(1, keepdim=True).clamp_min(1).float()


class FeatureQA(nn.Module):
    """A head on frozen clip features: logits = MLP([clip_features(frames)[video_index], bag of words]).

    `.features` (no parameters: the frozen part) and `.head` (Linear -> ReLU -> Dropout -> Linear, the
    only dropout), so the teacher stage runs the MC passes on the head only."""

    def __init__(self, num_tokens: int, num_answers: int, *, num_frames: int, mean: list[float], std: list[float],
                 hidden: int, dropout: float):
        super().__init__()
        from labelstore.pipeline.builtin_video import COLOURS

        self.num_tokens, self.mean, self.std = num_tokens, list(mean), list(std)
        d = num_frames * len(COLOURS) * N_CLIP_FEATURES + num_tokens
        self.answer_head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(hidden, num_answers))

    def features(self, frames, q_ids, q_mask, video_index=None) -> torch.Tensor:
        v = clip_features(frames, self.mean, self.std)  # [V, F]
        if video_index is not None:
            v = v[video_index]
        return torch.cat([v, bag_of_words(q_ids, q_mask, self.num_tokens)], dim=1)  # [B, F + W]

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.answer_head(feats)

    def forward(self, frames, q_ids, q_mask, video_index=None) -> torch.Tensor:
        return self.head(self.features(frames, q_ids, q_mask, video_index))


class SlotQA(nn.Module):
    """The fold teachers' model: one head shared by the palette colours (weights shared over colours, so each
    colour's answers learn from every colour's questions). For colour c with slot s_c = slot_features(...)[c]
    and the question's bag of words q: z_c = MLP([s_c, q]) in R^18, the logits of c's 15 'c shape motion' and
    3 'c shape' answers (slots [C, 18]: their vocabulary indices, covering the A = 90 answers once).

    Same interface as FeatureQA (`.features` without parameters, `.head` with the only dropout)."""

    def __init__(self, num_tokens: int, num_answers: int, *, num_frames: int, mean: list[float], std: list[float],
                 hidden: int, dropout: float, slots: list[list[int]]):
        super().__init__()
        self.num_tokens, self.mean, self.std = num_tokens, list(mean), list(std)
        slots_t = torch.as_tensor(slots, dtype=torch.int64)  # [C, S]
        self.num_colours, self.per_slot = slots_t.shape
        self.slot_dim = num_frames * N_SLOT_FRAME + N_SLOT_CLIP
        order = torch.empty(num_answers, dtype=torch.int64)
        order[slots_t.flatten()] = torch.arange(slots_t.numel())
        self.register_buffer("order", order)  # answer a's position in the flattened [C, S] slot logits
        self.answer_head = nn.Sequential(nn.Linear(self.slot_dim + num_tokens, hidden), nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(hidden, self.per_slot))

    def features(self, frames, q_ids, q_mask, video_index=None) -> torch.Tensor:
        v = slot_features(frames, self.mean, self.std).flatten(1)  # [V, C * Fs]
        if video_index is not None:
            v = v[video_index]
        return torch.cat([v, bag_of_words(q_ids, q_mask, self.num_tokens)], dim=1)  # [B, C * Fs + W]

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        C = self.num_colours
        s = feats[:, : C * self.slot_dim].view(len(feats), C, self.slot_dim)  # [B, C, Fs]
        q = feats[:, C * self.slot_dim:, None].transpose(1, 2).expand(-1, C, -1)  # [B, C, W]
        z = self.answer_head(torch.cat([s, q], 2)).flatten(1)  # [B, C * S]
        return z[:, self.order]  # [B, A]

    def forward(self, frames, q_ids, q_mask, video_index=None) -> torch.Tensor:
        return self.head(self.features(frames, q_ids, q_mask, video_index))


def answer_slots(vocab) -> list[list[int]]:
    """[C][18]: per palette colour c, the vocabulary indices of 'c shape motion' (shape-major) then 'c shape'."""
    from labelstore.pipeline.builtin_video import COLOURS, MOTIONS, SHAPES

    def describe(c, s, mo):
        return f"{c} {s} " + ("staying still" if mo == "static" else f"moving {mo}")

    return [[vocab.index(describe(c, s, mo)) for s in SHAPES for mo in MOTIONS]
            + [vocab.index(f"{c} {s}") for s in SHAPES] for c in COLOURS]


def view_features(model: FeatureQA | SlotQA, cache, policy, qa, indices: np.ndarray, chunk: int = 512) -> torch.Tensor:
    """[N, F + W] features of each question's view (frame indices [N, m]), in question order."""
    out = []
    with torch.no_grad():
        for b0 in range(0, len(qa), chunk):
            rows = np.arange(b0, min(len(qa), b0 + chunk))
            x, vi = cache.shared_views(policy, qa.video_rows[rows], indices[rows])
            out.append(model.features(x, torch.as_tensor(qa.q_ids[rows]), torch.as_tensor(qa.q_mask[rows]), vi))
    return torch.cat(out)


def acc_any(logits: torch.Tensor, sets: list[set[int]]) -> float:
    pred = logits.argmax(1).tolist()
    return float(np.mean([p in s for p, s in zip(pred, sets)]))


def _fit(model: nn.Module, n_epochs: int, n: int, batch_size: int, lr: float, seed: int, loss_fn) -> None:
    """AdamW (weight decay 1e-4) with a cosine schedule; batches from a permutation keyed by (seed, epoch);
    loss_fn(epoch, batch index, rows) -> loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = n_epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + np.cos(np.pi * min(k, steps) / steps)))
    model.train()
    for e in range(n_epochs):
        order = np.random.default_rng([seed, e]).permutation(n)
        for b, b0 in enumerate(range(0, n, batch_size)):
            loss = loss_fn(e, b, order[b0:b0 + batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


# --------------------------------------------------------------------------------------
# the experiment contract
# --------------------------------------------------------------------------------------


def teacher_line(meta: dict) -> str:
    r, lab = meta["recipe"], meta["stored_labels"]
    k = r["teacher_folds"]
    return (f"teacher: {k} fold teachers (SlotQA hidden {r['teacher_hidden']}, {r['teacher_epochs']} epochs, each on "
            f"the students' single-answer labels of the clips of the {k - 1} other folds; {meta['n_train_questions']} "
            f"training questions) test acc_any: {meta['teacher_acc_any']:.3f} ({k} averaged); stored (out-of-fold) "
            f"labels of the training questions: acc_any {lab['acc_any']:.3f}, mass {lab['gt_mass']:.3f} on the "
            f"annotated answer, {lab['other_mass']:.3f} on its other correct answers; {meta['num_answers']} answers, "
            f"{meta['questions_per_answer_median']:.0f} training questions per answer (median; min "
            f"{meta['questions_per_answer_min']}); store K = {meta['top_k']}, T = {r['mc_passes']}")


def result_line(result: dict) -> str:
    """Whether KD beats CE by >= GATE (paired by seed, mean and its interval, whatever the table's reference):
    the ranking arms are read only then."""
    from .experiment import summarize

    arms = result["arms"]
    if "kd" not in arms or "ce" not in arms:
        return "gate: kd or ce not run; the ranking arms cannot be read against a teacher KD is known to use"
    ce = dict(zip(arms["ce"]["seeds"], arms["ce"]["values"]))
    kd = dict(zip(arms["kd"]["seeds"], arms["kd"]["values"]))
    p = summarize([kd[s] - ce[s] for s in result["seeds"]])
    ok = p["mean"] >= GATE
    ci = "" if p["ci95"] is None else f", 95 % interval [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
    return (f"gate: kd - ce = {p['mean']:+.3f}{ci}: {'PASSED' if ok else 'FAILED'} (needs >= {GATE:+.3f}); "
            f"{'the ranking arms can be read' if ok else 'the ranking arms cannot be read'}")


def teacher_kwargs(r: dict, tokenizer, vocab, policy) -> dict:
    """SlotQA's arguments for a fold teacher of recipe r (dropout 0.3)."""
    return dict(num_tokens=len(tokenizer), num_answers=len(vocab), num_frames=r["num_frames"], mean=policy.mean,
                std=policy.std, hidden=r["teacher_hidden"], dropout=0.3, slots=answer_slots(vocab))


def train_teacher(kwargs: dict, feats: torch.Tensor, gt: torch.Tensor, rows: np.ndarray, r: dict, k: int) -> SlotQA:
    """Fold k's teacher: SlotQA(**kwargs) (initialised by torch seed k), r["teacher_epochs"] of CE on the
    annotated answers gt of the questions `rows` (those outside fold k), epoch e on the views feats[e % Vt]."""
    torch.manual_seed(k)
    t = SlotQA(**kwargs)
    _fit(t, r["teacher_epochs"], len(rows), r["batch_size"], r["lr"], 1 + k,
         lambda e, b, sel: F.cross_entropy(t.head(feats[e % len(feats)][rows[sel]]), gt[rows[sel]]))
    return t


def stored_label_stats(store, qa, vocab) -> dict[str, float]:
    """What the store holds on the training questions, over its epochs: acc_any of the stored argmax, the mean
    stored probability of the annotated answer (gt_mass) and the mean total on the question's other correct
    answers (other_mass)."""
    sets = qa.answer_sets(vocab)
    correct = torch.zeros(len(qa), len(vocab))
    for i, s in enumerate(sets):
        correct[i, list(s)] = 1.0
    gt = torch.as_tensor(qa.gt)
    acc, gt_mass, other = [], [], []
    for e in range(store.epochs):
        rec = store.read(e)
        idx = torch.as_tensor(rec["topk_indices"].astype(np.int64))
        p = torch.zeros(len(qa), len(vocab)).scatter_(1, idx, torch.as_tensor(rec["topk_values"].astype(np.float32)))
        acc.append(acc_any(p, sets))
        g = p.gather(1, gt[:, None])[:, 0]
        gt_mass.append(float(g.mean()))
        other.append(float(((p * correct).sum(1) - g).mean()))
    return {"acc_any": float(np.mean(acc)), "gt_mass": float(np.mean(gt_mass)), "other_mass": float(np.mean(other))}


def load_teacher(meta: dict) -> FoldTeachers:
    """The setup's FoldTeachers (out/teacher.pt), rebuilt on the store's tokenizer, vocabulary and policy."""
    import labelstore
    from labelstore.pipeline.text import AnswerVocab, Tokenizer
    from labelstore.pipeline.video import VideoPolicy

    r, a = meta["recipe"], labelstore.open(meta["store"]).attrs
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    kwargs = teacher_kwargs(r, Tokenizer.from_json(a["tokenizer"]), AnswerVocab.from_json(a["vocab"]), policy)
    sd = torch.load(meta["teacher"])
    teacher = FoldTeachers([SlotQA(**kwargs) for _ in range(r["teacher_folds"])], sd["frame_key"],
                           sd["frame_fold"], sd["key_weights"])
    teacher.load_state_dict(sd)
    return teacher.eval()


def setup(out: str, *, progress: bool = False, echo=print, **recipe) -> dict:
    """Data, features, fold teachers and store under `out` (made once: an existing setup.json is reused)."""
    import labelstore
    from labelstore.pipeline.builtin_video import make_videoqa_dataset
    from labelstore.pipeline.teach_videoqa import VideoQATeachConfig, teach_videoqa
    from labelstore.pipeline.text import AnswerVocab, Tokenizer, read_questions
    from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
    from labelstore.pipeline.videoqa_data import ClipCache, frame_indices, prepare_questions

    meta = read_setup(out)
    if meta is not None:
        return meta
    r = with_recipe(RECIPE, recipe)
    k_folds = r["teacher_folds"]
    if k_folds < 2:
        from labelstore.errors import ConfigError

        raise ConfigError(f"--recipe: teacher_folds must be >= 2 (each fold labelled by a teacher trained on the "
                          f"others), got {k_folds}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    data = make_videoqa_dataset(Path(out) / "data", n_train=r["n_train"], n_test=r["n_test"], frames=r["frames"],
                                size=r["size"], seed=r["data_seed"], vocab="large")
    q_train, q_test = os.path.join(out, "questions_train.jsonl"), os.path.join(out, "questions_test.jsonl")
    counts = derive_questions(data["questions_train"], q_train)
    derive_questions(data["questions_test"], q_test)
    videos = VideoFolder(data["videos"])
    tokenizer = Tokenizer.build(q.question for q in read_questions(q_train))
    vocab = AnswerVocab.build(testbed_vocabulary())
    per_answer = np.array([counts.get(a, 0) for a in testbed_vocabulary()])
    train_qa = prepare_questions(videos, q_train, tokenizer, vocab)
    test_qa = prepare_questions(videos, q_test, tokenizer, vocab)
    n_multi = sum(len(q.answers) > 1 for q in train_qa.questions)
    echo(f"data: {len(train_qa)} train / {len(test_qa)} test questions, {len(vocab)} answers, training questions "
         f"per answer: min {per_answer.min()}, median {np.median(per_answer):.0f}; {n_multi / len(train_qa):.0%} of "
         f"questions have several correct answers ({time.perf_counter() - t0:.1f}s)")

    m, fs = r["num_frames"], (r["size"], r["size"])
    cache, sampler = ClipCache(videos), FrameSampler(num_frames=m)
    policy = VideoPolicy(sampler=sampler, frame_size=fs)
    fold = clip_folds(train_qa.video_rows, k_folds, r["data_seed"])  # [N], by clip
    kwargs = teacher_kwargs(r, tokenizer, vocab, policy)
    featurizer = SlotQA(**kwargs)  # .features only (parameter-free): the teachers' frozen features
    t1 = time.perf_counter()
    feats = torch.stack([view_features(featurizer, cache, policy, train_qa,
                                       frame_indices(sampler, 1, e, videos, train_qa.video_rows))
                         for e in range(r["teacher_views"])])  # [Vt, N, F], the teachers' training views
    gt = torch.as_tensor(train_qa.gt)
    teachers = [train_teacher(kwargs, feats, gt, np.flatnonzero(fold != k), r, k) for k in range(k_folds)]
    weights = torch.randint(0, 2**31, (3 * fs[0] * fs[1],), generator=torch.Generator().manual_seed(0))
    teacher = FoldTeachers(teachers, *fold_table(cache, policy, train_qa.video_rows, fold, weights, policy.mean,
                                                 policy.std), weights)
    test_x = view_features(featurizer, cache, VideoPolicy(FrameSampler(num_frames=m, mode="uniform"), fs), test_qa,
                           frame_indices(FrameSampler(num_frames=m, mode="uniform"), 0, 0, videos, test_qa.video_rows))
    sets = test_qa.answer_sets(vocab)
    with torch.no_grad():
        t_acc = acc_any(teacher.mean_probs(test_x), sets)
        fold_accs = [acc_any(t.head(test_x), sets) for t in teachers]
    teacher_path = os.path.join(out, "teacher.pt")
    torch.save(teacher.state_dict(), teacher_path)
    echo(f"teachers: {k_folds} folds of {np.bincount(fold).tolist()} training questions; test acc_any "
         f"{t_acc:.3f} (averaged), alone {min(fold_accs):.3f}-{max(fold_accs):.3f} ({time.perf_counter() - t1:.1f}s)")
    store = os.path.join(out, "radi.zarr")
    st = teach_videoqa(store, videos, q_train, tokenizer, vocab, teacher, sampler,
                       VideoQATeachConfig(epochs=r["store_epochs"], seed=0, top_k=None, mc_passes=r["mc_passes"],
                                          batch_size=256, shard_rows=1024, frame_size=fs), overwrite=True)
    labels = stored_label_stats(labelstore.open(store), train_qa, vocab)
    echo(f"store: {st['views']} views, K = {st['top_k']}, T = {r['mc_passes']} ({st['seconds']:.1f}s); stored labels "
         f"on training questions: acc_any {labels['acc_any']:.3f}, mass on the annotated answer "
         f"{labels['gt_mass']:.3f}, on its other correct answers {labels['other_mass']:.3f}")
    meta = {"recipe": r, "videos": str(data["videos"]), "questions_train": q_train, "questions_test": q_test,
            "store": store, "teacher": teacher_path, "teacher_acc_any": t_acc, "teacher_fold_acc_any": fold_accs,
            "stored_labels": labels, "question_fold": fold.tolist(), "num_answers": len(vocab), "top_k": st["top_k"],
            "n_train_questions": len(train_qa), "n_test_questions": len(test_qa),
            "questions_per_answer_min": int(per_answer.min()),
            "questions_per_answer_median": float(np.median(per_answer)), "multi_answer_fraction": n_multi / len(train_qa)}
    write_setup(out, meta)
    return meta


def make_arms(meta: dict, names: list[str], progress: bool = False) -> dict:
    """arm name -> (seed -> {"acc_any", "seconds"}): students on features of the store's views and its targets."""
    import labelstore
    from labelstore.pipeline.text import AnswerVocab, Tokenizer
    from labelstore.pipeline.video import FrameSampler, VideoFolder, VideoPolicy
    from labelstore.pipeline.videoqa_data import ClipCache, frame_indices, prepare_questions

    from .losses import kd_kl, radi_objective
    from .videoqa import _batch_seed, pair_margins, rank_loss_radi

    check_arms(names, ARMS)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    r = meta["recipe"]
    store = labelstore.open(meta["store"])
    a = store.attrs
    vocab, tokenizer = AnswerVocab.from_json(a["vocab"]), Tokenizer.from_json(a["tokenizer"])
    videos = VideoFolder(meta["videos"])
    cache = ClipCache(videos)
    train_qa = prepare_questions(videos, meta["questions_train"], tokenizer, vocab)
    test_qa = prepare_questions(videos, meta["questions_test"], tokenizer, vocab)
    m, fs = r["num_frames"], (r["size"], r["size"])
    policy = VideoPolicy.from_json({k: v for k, v in a["policy"].items() if k != "digest"})
    dims = dict(num_tokens=len(tokenizer), num_answers=len(vocab), num_frames=m, mean=policy.mean, std=policy.std,
                hidden=r["student_hidden"], dropout=0.1)
    featurizer = FeatureQA(**dims)  # .features has no parameters: the same frozen features for every model
    E = store.epochs
    feats, vals, idx, mc = [], [], [], []
    for e in range(E):  # the store's views: its frames (as features) and its targets
        feats.append(view_features(featurizer, cache, policy, train_qa, store.read_array("aug/frames/indices", epoch=e)))
        rec = store.read(e)
        vals.append(torch.as_tensor(rec["topk_values"].astype(np.float32)))  # [N, A], the full ranking
        idx.append(torch.as_tensor(rec["topk_indices"].astype(np.int64)))
        mc.append(torch.as_tensor(rec["mc_values"][:, :, : r["hot_k"]].astype(np.float32)))  # [N, T, hot]
    # the margins are fixed per stored view: Sinkhorn once per view and store epoch, not once per step
    # (shuffled: one shuffle per view, seeded by the store epoch); some views stop at the trainer's
    # step limit with a marginal error of ~1e-5 (against 1/K = 0.1), which the warning reports
    kinds = {ARMS[n].get("margins") for n in names if ARMS[n]["method"] == "radi" and ARMS[n]["rank"] != "listwise"}
    hot_margins = {k: [pair_margins(mc[e], k, r["hot_k"], r["margin"], r["epsilon"], shuffle_seed=e) for e in range(E)]
                   for k in kinds - {"fixed"}}
    gt = torch.as_tensor(train_qa.gt)
    uni = FrameSampler(num_frames=m, mode="uniform")
    test_x = view_features(featurizer, cache, VideoPolicy(uni, fs), test_qa,
                           frame_indices(uni, 0, 0, videos, test_qa.video_rows))
    sets = test_qa.answer_sets(vocab)

    def arm(name: str):
        spec = ARMS[name]
        method, alpha = spec["method"], spec.get("alpha", 1.0)

        def run(seed: int) -> dict:
            t0 = time.process_time()
            torch.manual_seed(seed)
            student = FeatureQA(**dims)

            def loss_fn(ep: int, b: int, rows: np.ndarray) -> torch.Tensor:
                e = ep % E
                logits = student.head(feats[e][rows])  # [B, A]
                loss = F.cross_entropy(logits, gt[rows])
                if method == "kd":
                    q = torch.zeros_like(logits).scatter_(1, idx[e][rows], vals[e][rows])
                    loss = loss + alpha * kd_kl(logits, q / q.sum(1, keepdim=True), 1.0)
                elif method == "radi":
                    gen = torch.Generator().manual_seed(_batch_seed(seed, ep, b))
                    hm = hot_margins.get(spec["margins"])
                    pair, lst = rank_loss_radi(logits, vals[e][rows], idx[e][rows], mc[e][rows], gen,
                                               rank=spec["rank"], margins=spec["margins"], hot_k=r["hot_k"],
                                               cold_n=r["cold_n"], scheme="exp", scheme_alpha=None,
                                               list_method="listmle", margin=r["margin"], epsilon=r["epsilon"],
                                               hot_margins=None if hm is None else hm[e][rows])
                    loss = radi_objective(loss, pair, lst, alpha)
                return loss

            _fit(student, r["student_epochs"], len(train_qa), r["batch_size"], r["lr"], seed, loss_fn)
            with torch.no_grad():
                acc = acc_any(student.head(test_x), sets)
            return {"acc_any": acc, "cpu_seconds": time.process_time() - t0}

        return run

    return {n: arm(n) for n in names}
