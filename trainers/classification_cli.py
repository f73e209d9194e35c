"""The `labelstore teach|train|demo --task classification` entry points (labelstore.trainers.tasks).

teach / train take the common options (labelstore.cli_options.TeachCommon / TrainCommon) and the
task's own (trainers/classification_options.py), and return (result, summary line).
"""

from __future__ import annotations

import dataclasses

import labelstore
from labelstore.cli_options import TeachCommon, TrainCommon
from labelstore.errors import ConfigError
from labelstore.trainers.classification_options import ClassificationTeachOptions, ClassificationTrainOptions


def teach_command(c: TeachCommon, o: ClassificationTeachOptions, warn) -> tuple[dict, str]:
    from labelstore.pipeline import checks
    from labelstore.pipeline.augment import IMAGENET_MEAN, IMAGENET_STD
    from labelstore.pipeline.dist import create_on_rank0, local_device
    from labelstore.pipeline.images import open_source
    from labelstore.pipeline.policy_spec import parse_policy, parse_triple
    from labelstore.pipeline.teach import TeachConfig, open_or_create, teach
    from labelstore.trainers.spec import load_teacher

    out, rank, world_size = c.out, c.rank, c.world_size
    if o.feature_codec != "float16" and not o.features:
        raise ConfigError(f"--feature-codec {o.feature_codec} goes with --features NAME (the teacher module to record)")
    size = (o.image_size,) * 2
    policy = parse_policy(o.policy_name, size, parse_triple(o.mean, "--mean", IMAGENET_MEAN),
                          parse_triple(o.std, "--std", IMAGENET_STD), o.crop_scale)  # bad values fail first
    source = open_source(c.data_spec, unlabeled=o.unlabeled)
    C = o.num_classes or len(source.classes)
    if not C:
        raise ConfigError(f"--data {c.data_spec} is unlabelled: give --num-classes (the teacher's classes)")
    empty = [k for i, k in enumerate(source.classes) if not (source.labels == i).any()]
    try:
        model, info = load_teacher(c.teacher, C, o.teacher_weights)
    except ConfigError as e:
        if not empty:
            raise
        raise ConfigError(f"{e} (--data {c.data_spec} has {C} class folders, and {empty} of them hold no "
                          "images: an empty class folder still counts as a class)") from e
    if empty:
        warn(f"--data {c.data_spec}: class folder(s) {empty} hold no images (each still counts as one of the "
             f"{C} classes)")
    warn(checks.mc_without_dropout(model, o.mc_passes))
    zoo = info.get("preprocessing") or {}  # what a zoo model says it was trained on (trainers/zoo.py)
    warn(checks.input_size_differs(zoo.get("input_size"), c.teacher, o.image_size))
    if zoo.get("mean") and zoo.get("std"):  # --mean/--std given win over the zoo's, the zoo's over ImageNet's
        policy = dataclasses.replace(policy, **{k: tuple(zoo[k]) for k in ("mean", "std") if getattr(o, k) is None})
    cfg = TeachConfig(epochs=c.epochs, seed=c.seed, top_k=o.top_k, mc_passes=o.mc_passes, batch_size=c.batch_size,
                      views_per_decode=o.views_per_decode, shard_rows=o.shard_samples, chunk_rows=o.chunk_samples,
                      skip_bad=o.skip_bad, digests=not o.no_digest, store_params=o.store_params,
                      decode_workers=o.workers, render_device=o.render_device, features=o.features,
                      feature_codec=o.feature_codec)
    resume, overwrite = c.resume, c.overwrite
    if world_size > 1:  # rank 0 creates (or replaces, or checks) the store first; the others then join it
        resume, overwrite = create_on_rank0(out, rank, world_size, c.local_rank, lambda: open_or_create(
            out, source, policy, cfg, info, C, resume=resume, overwrite=overwrite, teacher=model))
    stats = teach(out, source, model, policy, cfg, teacher_info=info, num_classes=C,
                  device=local_device(c.local_rank, o.device), amp=o.amp, resume=resume, overwrite=overwrite,
                  rank=rank, world_size=world_size, progress=not c.quiet)
    if stats.get("already_complete"):
        return stats, f"{out}: already complete, nothing to do (the store was not changed)"
    state = "complete" if stats["complete"] else "incomplete (other ranks still running)"
    line = f"{out}: {stats['views']} views in {stats['seconds']:.1f}s ({stats['views_per_s']:.0f} views/s), {state}"
    if stats["complete"]:
        from labelstore.pipeline.classification_inspect import teacher_agreement
        from labelstore.views import mean_topk_mass

        store = labelstore.open(out)
        warn(checks.low_topk_mass(mean_topk_mass(store), o.top_k))
        stats["teacher_agreement"] = agreement = teacher_agreement(store)
        warn(checks.untrained_teacher(agreement, c.teacher))
        for w in checks.split_gap(agreement):
            warn(w)
        line += "".join(f"\n{x}" for x in [checks.agreement_line(agreement)] if x)
    return stats, line


def check_output_classes(model, option: str, spec: str, num_classes: int, size: tuple[int, int], store) -> None:
    """ConfigError unless model(x) for one view x [1, 3, H, W] is [1, num_classes] (the store's classes)."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *size))
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        n = f"{out.shape[1]} classes" if isinstance(out, torch.Tensor) and out.ndim == 2 else f"shape {shape}"
        raise ConfigError(f"{option} {spec}: the model outputs {n} per view, but the store {store.path} has "
                          f"{num_classes} classes")


def train_command(c: TrainCommon, o: ClassificationTrainOptions, warn) -> tuple[dict | None, str]:
    """Distillation of a classification student; under torchrun only rank 0 returns the metrics (others: None)."""
    from labelstore.pipeline.dist import dist_env, local_device, process_group
    from labelstore.pipeline.images import open_source
    from labelstore.pipeline.replay import open_data
    from labelstore.pipeline.teacher import pick_device
    from labelstore.trainers.distill import DistillConfig, train_student
    from labelstore.trainers.feature_student import FEATURE_LOSSES, feature_student
    from labelstore.trainers.fit import eval_batches
    from labelstore.trainers.loop import seed_everything
    from labelstore.trainers.spec import load_model, load_weights

    if o.online_teacher_weights and c.mode != "online":
        raise ConfigError("--online-teacher-weights goes with --mode online --online-teacher SPEC")
    if bool(o.unlabeled_store) != bool(o.unlabeled_data):
        raise ConfigError("--unlabeled-store and --unlabeled-data go together")
    mode, loss, student = c.mode, c.loss or "fkd", c.student or "cnn-tiny"
    if loss not in ("fkd", "ferkd", "adl", *FEATURE_LOSSES):
        raise ConfigError(f"--loss {loss} is not a classification loss (fkd, ferkd, adl, {', '.join(FEATURE_LOSSES)})")
    store = labelstore.open(c.store_path)
    data = open_data(store, c.data_spec)  # an unlabelled store's folder opens as unlabelled
    teacher = load_model(c.online_teacher, num_classes=store.num_classes) if mode == "online" else None
    if teacher is not None and o.online_teacher_weights:
        load_weights(teacher, o.online_teacher_weights, "--online-teacher-weights", c.online_teacher)
    seed_everything(c.seed)  # the student's initialisation is a function of --seed
    model = load_model(student, num_classes=store.num_classes)
    if o.student_weights:
        load_weights(model, o.student_weights, "--student-weights", student)
    size = tuple(store.attrs["policy"]["output_size"])
    check_output_classes(model, "--student", student, store.num_classes, size, store)
    if teacher is not None:
        check_output_classes(teacher, "--online-teacher", c.online_teacher, store.num_classes, size, store)
    if loss in FEATURE_LOSSES and mode == "cache":  # the student + its projector (+ the store's teacher head)
        model = feature_student(model, store, loss)
    pol = store.attrs["policy"]  # held-out views are normalised as the store's (the teacher's) inputs
    evals = eval_batches(open_source(o.eval_data), size, mean=pol["mean"], std=pol["std"]) if o.eval_data else None
    unlabeled = None
    if o.unlabeled_store:
        store_u = labelstore.open(o.unlabeled_store)
        unlabeled = (store_u, open_data(store_u, o.unlabeled_data))
    cfg = DistillConfig(mode=mode, loss=loss, epochs=c.epochs, batch_size=c.batch_size, lr=o.lr,
                        temperature=o.temperature, fill=o.fill, hard_weight=o.hard_weight,
                        select_threshold=o.select_threshold, num_workers=c.workers, seed=c.seed,
                        ferkd={"low": o.ferkd_low, "high": o.ferkd_high, "epsilon": 0.1})
    rank, world_size, local_rank = dist_env()
    with process_group(world_size, local_rank):
        m = train_student(model, store, data, cfg, eval_batches=(lambda: evals) if evals else None, teacher=teacher,
                          unlabeled=unlabeled, device=pick_device(local_device(local_rank, o.device)), out_dir=c.out)
    if rank:
        return None, ""
    from labelstore.pipeline.classification_inspect import teacher_agreement

    f = m["final"]
    acc = f" eval accuracy {f['eval_accuracy']:.4f}" if "eval_accuracy" in f else ""
    agreement = teacher_agreement(store)  # the store's teacher on its own (training) views
    if agreement["views"]:
        m["teacher_store_top1"] = agreement["top1"]
        acc += f" (the store's teacher: top-1 {agreement['top1']:.4f} on its {agreement['views']} labelled views)"
    return m, (f"{mode}: {len(m['history'])} epochs in {m['seconds']:.1f}s, loss {f.get('loss', float('nan')):.4f}{acc}"
               f" -> {c.out}/metrics.json")


def demo_command(out: str, seed: int, progress: bool, echo) -> dict:
    from labelstore.trainers.demo import run_demo

    return run_demo(out, seed=seed, progress=progress, echo=echo)
