"""The `labelstore` command line: a thin shell over labelstore/, pipeline/ and trainers/.

This is the one module of labelstore/ that imports pipeline/ and trainers/, and only inside
each command, so `import labelstore` stays light.
"""

from __future__ import annotations

import json
import sys

import click

import labelstore
from labelstore.errors import LabelstoreError


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _warn(msg: str | None) -> None:
    if msg:
        click.echo(f"warning: {msg}", err=True)


def _configure_logging() -> None:
    """The library's diagnostics (logger "labelstore") on stderr at $LABELSTORE_LOG (default WARNING);
    the CLI's own `error:` / `warning:` lines are separate and unchanged."""
    import logging
    import os

    level = os.environ.get("LABELSTORE_LOG", "WARNING").upper()
    log = logging.getLogger("labelstore")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.NullHandler) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(getattr(logging, level, logging.WARNING))


class _Group(click.Group):
    """Known user errors (bad input, mismatched stores, bad options) print one `error:` line, exit 2."""

    def main(self, *args, **kwargs):
        _configure_logging()
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # `labelstore` alone: the help, as click prints it
            click.echo(e.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as e:  # bad option value, missing option, unknown command: no usage dump
            cmd = e.ctx.command_path if e.ctx is not None else "labelstore"
            _fail(f"{cmd}: {e.format_message()} (see {cmd} --help)")
        except click.ClickException as e:
            _fail(e.format_message())
        except click.Abort:
            _fail("aborted")
        sys.exit(rv if isinstance(rv, int) else 0)  # --help / --version return their exit code

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (LabelstoreError, FileNotFoundError) as e:  # DecodeError etc. are DataError; any other error is a bug
            _fail(str(e))


@click.group(cls=_Group)
@click.version_option(labelstore.__version__)
def main() -> None:
    """Record teacher labels once per dataset; train many students from the store."""


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _stdout_to_stderr(on: bool):
    """With --json: everything the command prints along the way goes to stderr, so stdout is the JSON alone."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr) if on else contextlib.nullcontext()


SEED = click.IntRange(0, 2**63 - 1)  # seeds are uint64 RNG keys below 2**63 (store attributes are JSON int64)
POSITIVE = click.IntRange(min=1)
NONNEGATIVE = click.IntRange(min=0)
STORE = click.Path()  # a local path or a URL (s3://, gs://, memory://): existence is checked when opened
STORAGE_OPTIONS = click.option(
    "--storage-options", default=None, metavar="JSON",
    help='For URL stores: fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
         "(default: fsspec's configuration and the environment).")


def _check_not_a_file(option: str, path: str) -> None:
    """--out / --store naming an existing regular file (not a folder, not a URL): one error line."""
    import os

    from labelstore import location

    if not location.is_url(path) and os.path.lexists(location.local_path(path)) \
            and not os.path.isdir(location.local_path(path)):
        _fail(f"{option} {path} is an existing file, not a folder: give another path (nothing was changed)")


def _use_storage_options(store: str, text: str | None) -> None:
    """Hand --storage-options to every fsspec file system of the store's protocol in this process."""
    from labelstore import location

    location.configure(store, location.parse_storage_options(text))


# ---------------------------------------------------------------------------------------------
@main.command()
@click.argument("kind", type=click.Choice(["shapes", "shapes-h5"]))
@click.option("--out", required=True, type=click.Path(), help="Directory (or .h5 file) to write.")
@click.option("--train", "n_train", type=POSITIVE, default=2000, show_default=True)
@click.option("--test", "n_test", type=NONNEGATIVE, default=500, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (nothing else).")
def data(kind: str, out: str, n_train: int, n_test: int, seed: int, as_json: bool) -> None:
    """Write a built-in generated dataset as real image files (ImageFolder layout) or HDF5."""
    from labelstore.pipeline import images

    if kind == "shapes":
        train, test = images.make_shapes_dataset(out, n_train=n_train, n_test=n_test, seed=seed)
        r = {"train": str(train), "test": str(test), "n_train": n_train, "n_test": n_test}
        msg = f"wrote {train} ({n_train} images) and {test} ({n_test} images)"
    else:
        images.make_hdf5_dataset(out, n_train, seed=seed)
        r, msg = {"train": str(out), "n_train": n_train}, f"wrote {out} ({n_train} images)"
    click.echo(json.dumps(r) if as_json else msg)


def load_teacher(spec: str, num_classes: int, weights: str | None = None):
    """(model, teacher_info) for any model spec (trainers/spec.py), with the --teacher-weights file loaded."""
    from labelstore.trainers.spec import load_teacher as load

    return load(spec, num_classes, weights)


SPEC_HELP = ("a built-in model name, module:callable[?key=value&...], hf:NAME_OR_DIR, timm:NAME, torchvision:NAME, "
             "or a checkpoint .pt (docs/cli.md, 'Model specs')")


def weights_option(name: str, role: str):
    """--teacher-weights / --student-weights / --online-teacher-weights: a state_dict file for the model."""
    return click.option(name, default=None, type=click.Path(dir_okay=False), metavar="FILE",
                        help=f"(classification) A torch.save'd state_dict (or a dict holding it under 'state_dict' or "
                             f"'model') loaded strictly into the {role} the spec builds; missing/unexpected keys are "
                             "named.")


def _classification_only(task: str, **weights: str | None) -> None:
    for option, value in weights.items():
        if value and task != "classification":
            _fail(f"--{option.replace('_', '-')} is for --task classification; for --task {task} give a checkpoint "
                  "or a module:callable that loads its weights itself (?weights=FILE)")


class _TaskChoice(click.Choice):
    """--task: one of the names of the task registry (labelstore.trainers.tasks.TASKS), read when the
    option is first parsed or shown, so importing this module imports no task."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        from labelstore.trainers.tasks import TASKS as registry

        return tuple(registry)


TASKS = _TaskChoice()


@main.command()
@click.option("--task", type=TASKS, default="classification", show_default=True)
@click.option("--data", "data_spec", required=True,
              help="ImageFolder dir or file.h5[:images[:labels]]; for video tasks a video dir (or frame-feature .h5).")
@click.option("--unlabeled", is_flag=True,
              help="(classification) --data is an unlabelled folder: every image under it, no class sub-folders "
                   "(give --num-classes).")
@click.option("--captions", default=None, help="(retrieval) captions file: JSON lines or CSV (video_id, caption).")
@click.option("--questions", default=None, help="(videoqa) questions file: JSON lines or CSV (video_id, question, answer).")
@click.option("--frames", type=POSITIVE, default=None, help="(video tasks) frames sampled per video (default: the teacher's).")
@click.option("--frame-size", type=POSITIVE, default=None, help="(video tasks) frame resolution (default: the teacher's).")
@click.option("--similarity-mode", type=click.Choice(["dense", "embeddings", "batches"]), default="dense",
              show_default=True, help="(retrieval) how teacher similarities are stored.")
@click.option("--teacher", required=True, help=f"The teacher: {SPEC_HELP}.")
@weights_option("--teacher-weights", "teacher")
@click.option("--allow-untrained-teacher", is_flag=True,
              help="Accept a built-in model name (random weights) as teacher, without --teacher-weights.")
@click.option("--out", required=True, type=STORE, help="Store to write: a directory (*.zarr) or a URL (s3://...).")
@STORAGE_OPTIONS
@click.option("--epochs", type=POSITIVE, default=4, show_default=True, help="Epochs of views to label.")
@click.option("--top-k", type=POSITIVE, default=None,
              help="Stored top-k (default: 5 for classification; every answer for videoqa, the full ranking RADI's "
                   "cold lists are drawn from).")
@click.option("--mc-passes", type=NONNEGATIVE, default=0, show_default=True, help="MC-dropout passes (0 = none).")
@click.option("--policy", "policy_name", default="crop-flip", show_default=True,
              help="(classification) A built-in policy (none, crop-flip, crop-flip-jitter, cutmix, mixup, selfmix), "
                   "an op list such as 'rrc(scale=0.35,1)+flip(p=0.5)' (ops: rrc, resize, flip, jitter, selfmix, "
                   "cutmix, mixup and registered user ops), or a .json file of ops (docs/cli.md).")
@click.option("--crop-scale", nargs=2, type=float, default=None,
              help="Random-resized-crop area range of a built-in policy.  [default: 0.08 1.0]")
@click.option("--mean", default=None, metavar="R,G,B",
              help="(classification) The teacher's input mean, recorded in the store and used by every student: "
                   "input = (pixel/255 - mean) / std.  [default: 0.485,0.456,0.406 (ImageNet)]")
@click.option("--std", default=None, metavar="R,G,B",
              help="(classification) The teacher's input std (a value may be a fraction, e.g. 1/255).  "
                   "[default: 0.229,0.224,0.225 (ImageNet)]")
@click.option("--image-size", type=POSITIVE, default=32, show_default=True, help="Output resolution of the views.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--num-classes", type=POSITIVE, default=None, help="Teacher classes (default: the dataset's).")
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True)
@click.option("--views-per-decode", type=NONNEGATIVE, default=0, show_default=True, help="Epochs labelled per image decode; 0 = all.")
@click.option("--shard-samples", type=POSITIVE, default=8192, show_default=True, help="Rows per shard = per work unit.")
@click.option("--chunk-samples", type=POSITIVE, default=2048, show_default=True, help="Rows per inner chunk (read unit).")
@click.option("--workers", type=POSITIVE, default=4, show_default=True, help="Decode threads.")
@click.option("--device", default=None, help="cuda / cpu (default: cuda when present).")
@click.option("--render-device", default=None,
              help="Where views are rendered, the same bytes anywhere: cpu (numba kernels), cuda[:i] (torch, sources "
                   "uploaded once per image), torch:cpu (the torch path on the CPU). Default: the teacher's device.")
@click.option("--amp/--no-amp", default=None, help="Autocast on CUDA (default: on for CUDA).")
@click.option("--skip-bad", is_flag=True, help="Record undecodable images as skipped instead of stopping.")
@click.option("--no-digest", is_flag=True, help="Do not store per-view input digests.")
@click.option("--store-params", is_flag=True,
              help="(classification) Also store the augmentation parameters (aug/* arrays, ~5 bytes per view for "
                   "crop-flip); by default students re-derive them from the counter-based RNG.")
@click.option("--resume", is_flag=True, help="Finish an interrupted store.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--rank", type=NONNEGATIVE, default=None,
              help="This process's rank (several processes fill one store; default: $RANK or 0).")
@click.option("--world-size", type=POSITIVE, default=None, help="Processes filling the store (default: $WORLD_SIZE or 1).")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (nothing else).")
def teach(task, data_spec, unlabeled, captions, questions, frames, frame_size, similarity_mode, teacher, teacher_weights,
          allow_untrained_teacher, out, storage_options, epochs, top_k, mc_passes, policy_name, crop_scale, mean, std, image_size,
          seed, num_classes,
          batch_size, views_per_decode, shard_samples, chunk_samples, workers, device, render_device, amp, skip_bad,
          no_digest, store_params, resume, overwrite, rank, world_size, quiet, as_json) -> None:
    """Run the teacher once over every (epoch, sample) view and write the label store.

    Several processes fill one store: `torchrun --nproc_per_node N --no-python labelstore teach ...`
    (RANK / WORLD_SIZE / LOCAL_RANK from the environment, each on cuda:LOCAL_RANK when present),
    or one process per --rank with the same --world-size."""
    from labelstore.pipeline import checks
    from labelstore.pipeline.dist import dist_env, local_device
    from labelstore.trainers.models import MODELS
    from labelstore.trainers.tasks import check_ranks, entry_point

    _classification_only(task, teacher_weights=teacher_weights)
    checks.check_trained_teacher(teacher, MODELS, allow_untrained_teacher, teacher_weights)
    _check_not_a_file("--out", out)
    _use_storage_options(out, storage_options)
    rank, world_size, local_rank = dist_env(rank, world_size)
    check_ranks(task, "teach", world_size)
    options = {**click.get_current_context().params, "rank": rank, "world_size": world_size,
               "local_rank": local_rank, "device": local_device(local_rank, device)}
    stats, line = entry_point(task, "teach")(options, _warn)
    if as_json:
        return _echo_json({"store": out, **stats})
    click.echo(line)


# ---------------------------------------------------------------------------------------------
def store_info(store, check_objects: bool = False) -> dict:
    """Schema, completeness and size of a store (what `info` prints); every array's stored bytes and
    bytes per view come from LabelStore.bytes_per_view_table. Metadata only, the same cost at 300 epochs
    as at 4: the state is the store's own attribute. With check_objects, also one existence check per
    object the manifest records (linear in the store's objects; "missing" lists the absent ones and the
    state becomes "damaged (...)"); without, "missing" is None (not checked)."""
    table = {r["name"]: r for r in store.bytes_per_view_table()}
    arrays = []
    for name, arr in sorted(store.arrays.items()):
        arrays.append({"name": name, "dims": list(arr.metadata.dimension_names), "shape": list(arr.shape),
                       "dtype": "string" if arr.dtype.kind == "T" else str(arr.dtype), "chunks": list(arr.chunks), "shards": list(arr.shards or arr.chunks),
                       "bytes": table[name]["bytes"], "bytes_per_view": table[name]["bytes_per_view"]})
    from labelstore import manifest

    done, total = store.progress()
    views = store.epochs * store.num_samples
    a = store.attrs
    missing = manifest.absent(store.group) if check_objects else None
    state = a.get("state") if not missing else f"damaged ({len(missing)} written objects missing; see `labelstore verify`)"
    return {
        "path": store.path, "task": a.get("task"), "format_version": a.get("format_version"),
        "state": state, "missing": missing, "units_done": done, "units_total": total,
        "epochs": a.get("epochs"), "num_samples": a.get("num_samples"), "num_classes": a.get("num_classes"),
        "top_k": a.get("top_k"), "mc_passes": a.get("mc_passes"), "seed": a.get("seed"),
        "teacher": a.get("teacher"), "dataset": a.get("dataset"), "aug_params": a.get("aug_params"),
        "policy": [op.get("name") or op.get("type") for op in a.get("policy", {}).get("ops", [])],
        "arrays": arrays, "views": views,
        "bytes_total": sum(r["bytes"] for r in table.values()), "bytes_per_view": store.bytes_per_view(),
        "record_bytes_per_view": sum(r["bytes_per_view"] for r in table.values() if r["per_epoch"]),
    }


@main.command()
@click.argument("store_path", type=STORE)
@STORAGE_OPTIONS
@click.option("--check-objects", is_flag=True,
              help="Also check that every object the manifest records exists (one existence check per object: "
                   "linear in the store's size; `verify` also checks their sizes and checksums).")
@click.option("--json", "as_json", is_flag=True)
def info(store_path: str, storage_options: str | None, check_objects: bool, as_json: bool) -> None:
    """Schema, completeness and on-disk bytes per view of a store (metadata only, unless --check-objects)."""
    _use_storage_options(store_path, storage_options)
    store = labelstore.open(store_path, allow_incomplete=True)
    d = store_info(store, check_objects)
    if as_json:
        return _echo_json(d)
    click.echo(f"{d['path']}  task={d['task']}  format v{d['format_version']}  state={d['state']} "
               f"({d['units_done']}/{d['units_total']} work units)")
    click.echo(f"epochs={d['epochs']} samples={d['num_samples']} classes={d['num_classes']} top_k={d['top_k']} "
               f"mc_passes={d['mc_passes']} seed={d['seed']}")
    t = d["teacher"] or {}
    click.echo(f"teacher: {t.get('name')} sha256={str(t.get('weights_sha256'))[:16]}  policy: {', '.join(map(str, d['policy']))}")
    ds = d["dataset"] or {}
    click.echo(f"dataset: {ds.get('kind')} {ds.get('root', '')} digest={str(ds.get('digest'))[:16]}")
    click.echo(f"augmentation parameters: {d['aug_params'] or 'stored'}")
    click.echo(f"{'array':<22}{'dims':<34}{'dtype':<9}{'chunk':<16}{'shard':<16}{'bytes':>12}{'B/view':>9}")
    for r in d["arrays"]:
        click.echo(f"{r['name']:<22}{','.join(r['dims']):<34}{r['dtype']:<9}{'x'.join(map(str, r['chunks'])):<16}"
                   f"{'x'.join(map(str, r['shards'])):<16}{r['bytes']:>12}{r['bytes_per_view']:>9.2f}")
    click.echo(f"on disk: {d['bytes_total']} bytes; {d['bytes_per_view']:.2f} bytes per view "
               f"(per-view records alone: {d['record_bytes_per_view']:.2f})")
    if d["missing"] is None:
        click.echo("objects: not checked (--check-objects: that every recorded object exists)")
    for m in (d["missing"] or [])[:20]:
        click.echo(f"  {m}")


@main.command()
@click.argument("store_path", type=STORE)
@STORAGE_OPTIONS
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", type=click.Path(), default=None, help="Write a PNG of the per-epoch statistics.")
@click.option("--report", type=click.Path(), default=None,
              help="Write a self-contained HTML report (figures + tables).")
@click.option("--data", "data_spec", default=None,
              help="(with --report, classification) the dataset the store was built from: adds a gallery of "
                   "replayed views (hardest, easiest, most uncertain).")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address (default: local threads).")
@click.option("--allow-incomplete", is_flag=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect(store_path: str, storage_options: str | None, as_json: bool, plot: str | None, report: str | None,
            data_spec: str | None, scheduler: str | None, allow_incomplete: bool, quiet: bool) -> None:
    """Per-epoch label statistics computed with Dask from the Zarr arrays (progress on stderr)."""
    import contextlib

    from labelstore import pipeline as _pipeline  # noqa: F401  (registers the derivation of aug parameters)
    from labelstore import views
    from labelstore.trainers import tasks

    _use_storage_options(store_path, storage_options)
    if data_spec and not report:
        _fail("--data adds the gallery to the HTML report: give --report FILE too")
    store = labelstore.open(store_path, allow_incomplete=allow_incomplete)
    if not store.complete:
        done, total = store.progress()
        _warn(f"{store_path}: {total - done} of {total} work units are not written yet; their rows are left out "
              "of the statistics")
    if data_spec and store.task not in tasks.gallery_tasks():
        _fail(f"--data: the gallery of replayed views is for {', '.join(tasks.gallery_tasks())} stores; "
              f"{store_path} is {store.task}")
    from labelstore.progress import dask_progress

    progress = contextlib.nullcontext() if quiet or scheduler else dask_progress("inspect")
    with progress:
        stats, lines = tasks.inspect_store(store, scheduler=scheduler, warn=_warn)
        if report:
            tasks.write_report(report, store, stats, store_info(store), scheduler=scheduler, data=data_spec)
    if plot:
        views.plot_stats(stats, plot)
    if as_json:
        return _echo_json(stats)
    per = stats["per_epoch"]
    keys = list(per)
    click.echo("epoch  " + "  ".join(f"{k:>15}" for k in keys))
    for e in range(len(per[keys[0]])):
        click.echo(f"{e:>5}  " + "  ".join(f"{per[k][e]:>15.4f}" for k in keys))
    for name, h in stats.get("histograms", {}).items():
        click.echo(f"{name}: counts {h['counts']}")
    for line in lines:
        click.echo(line)
    if plot:
        click.echo(f"plot written to {plot}")
    if report:
        click.echo(f"report written to {report}")


@main.command()
@click.argument("store_path", type=STORE)
@STORAGE_OPTIONS
@click.option("--data", "data_spec", required=True, help="The dataset the store was built from.")
@click.option("--teacher", default=None, help=f"Recompute the teacher on replayed views: {SPEC_HELP}.")
@weights_option("--teacher-weights", "teacher")
@click.option("--allow-untrained-teacher", is_flag=True,
              help="Accept a built-in model name (random weights) as teacher, without --teacher-weights.")
@click.option("--samples", type=POSITIVE, default=64, show_default=True, help="Random (epoch, sample) views to replay.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--json", "as_json", is_flag=True)
def verify(store_path, storage_options, data_spec, teacher, teacher_weights, allow_untrained_teacher, samples, seed,
           device, as_json) -> None:
    """Check fingerprints, chunk checksums, pixel identity of replayed views and (with --teacher) the labels.

    Damage does not stop it: every damaged array and row range is listed, the other checks carry on,
    and the exit status is 1."""
    from labelstore.pipeline import checks
    from labelstore.trainers.models import MODELS
    from labelstore.trainers.tasks import store_entry_point

    if teacher_weights and not teacher:
        _fail("--teacher-weights needs --teacher SPEC (the model the weights go into)")
    checks.check_trained_teacher(teacher, MODELS, allow_untrained_teacher, teacher_weights)
    _use_storage_options(store_path, storage_options)
    store = labelstore.open(store_path, check_metadata=False)  # edited metadata is listed, not refused
    run_verify = store_entry_point(store, "verify")
    model = load_teacher(teacher, store.num_classes, teacher_weights)[0] if teacher else None
    r = run_verify(store, data_spec, teacher=model, samples=samples, seed=seed, device=device)
    if as_json:
        _echo_json(r)
    else:
        click.echo("dataset fingerprint: ok")
        problems = r["chunk_problems"]
        click.echo(f"manifest, metadata and chunk checksums: {f'{len(problems)} problems' if problems else 'ok'}")
        for p in problems:
            click.echo(f"  {p}")
        for p in r["replay_problems"]:
            click.echo(f"  replay: {p}")
        click.echo(f"replayed views: {r['digests_equal']}/{r['digests_checked']} pixel-identical (crc32c of the input)")
        if "teacher_mismatches" in r:
            click.echo(f"teacher recomputed on {r['views_checked']} views: {r['teacher_mismatches']} disagree with the "
                       f"stored top-k (max |p - stored| = {r['max_abs_prob_diff']:.2e})")
        click.echo("OK" if r["ok"] else "FAILED")
    sys.exit(0 if r["ok"] else 1)


@main.command()
@click.option("--task", type=TASKS, default="classification", show_default=True)
@click.option("--store", "store_path", required=True, type=STORE, help="The store: a directory or a URL (s3://...).")
@STORAGE_OPTIONS
@click.option("--data", "data_spec", required=True, help="The dataset (or video dir) the store was built from.")
@click.option("--captions", default=None, help="(retrieval) the captions file the store was built from.")
@click.option("--questions", default=None, help="(videoqa) the questions file the store was built from.")
@click.option("--student", default=None, help=f"The student: {SPEC_HELP} (default: per task).")
@weights_option("--student-weights", "student (its initial weights)")
@click.option("--mode", type=click.Choice(["cache", "online", "none"]), default="cache", show_default=True,
              help="Targets from the store, from a live teacher, or none (hard labels / InfoNCE / CE only).")
@click.option("--loss", type=click.Choice(["fkd", "ferkd", "adl", "kd", "radi", "teachclip", "cgt", "fgt"]), default=None,
              help="classification: fkd (default), ferkd, adl; videoqa: radi (default), kd; retrieval: teachclip "
                   "(CgT + FgT, default), cgt (CgT only), fgt (FgT only).")
@click.option("--eval-questions", default=None, help="(videoqa) held-out questions with full answer sets.")
@click.option("--eval-captions", default=None, help="(retrieval) held-out captions.")
@click.option("--hot-k", type=NONNEGATIVE, default=10, show_default=True, help="(videoqa) RADI hot list.")
@click.option("--cold-n", type=NONNEGATIVE, default=10, show_default=True, help="(videoqa) RADI cold list.")
@click.option("--cold-scheme", type=click.Choice(["exp", "zipf"]), default="exp", show_default=True)
@click.option("--radi-rank", type=click.Choice(["pairwise", "listwise", "both"]), default="both", show_default=True,
              help="(videoqa) RADI's ranking terms.")
@click.option("--margins", type=click.Choice(["adaptive", "fixed"]), default="adaptive", show_default=True,
              help="(videoqa) RADI pairwise margins: Sinkhorn from the MC-dropout uncertainty, or constant.")
@click.option("--alpha", type=float, default=None, help="(videoqa) weight of the ranking loss (default: RADI's).")
@click.option("--online-teacher", default=None, help="Teacher spec for --mode online (as --teacher of teach).")
@weights_option("--online-teacher-weights", "online teacher")
@click.option("--eval-data", default=None, help="Held-out ImageFolder/HDF5 for evaluation.")
@click.option("--epochs", type=NONNEGATIVE, default=0, show_default=True, help="0 = the store's epochs.")
@click.option("--batch-size", type=POSITIVE, default=128, show_default=True)
@click.option("--lr", type=float, default=None, help="Learning rate (default: AdamW 5e-3).")
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--fill", type=click.Choice(["marginal", "renorm"]), default="marginal", show_default=True)
@click.option("--hard-weight", default=0.0, show_default=True, help="Weight of the ground-truth CE term.")
@click.option("--unlabeled-store", default=None, type=STORE,
              help="(classification) a store of an unlabelled folder (teach --unlabeled): its views whose teacher "
                   "top-1 probability >= --select-threshold join training with that pseudo label (ADL's scheme).")
@click.option("--unlabeled-data", default=None, help="The unlabelled folder --unlabeled-store was built from.")
@click.option("--select-threshold", default=0.9, show_default=True, help="Teacher confidence that selects an unlabelled view.")
@click.option("--ferkd-low", default=0.05, show_default=True)
@click.option("--ferkd-high", default=0.95, show_default=True)
@click.option("--workers", type=NONNEGATIVE, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--out", required=True, type=click.Path(), help="Directory for the checkpoint and metrics.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout (nothing else).")
def train(task, store_path, storage_options, data_spec, captions, questions, student, student_weights, mode, loss,
          eval_questions, eval_captions, hot_k, cold_n, cold_scheme, radi_rank, margins, alpha, online_teacher,
          online_teacher_weights, eval_data, epochs, batch_size, lr,
          temperature, fill, hard_weight, unlabeled_store, unlabeled_data, select_threshold, ferkd_low, ferkd_high, workers, seed, device, out, as_json) -> None:
    """Train a student on the store's replayed views (from the cache, an online teacher, or no teacher).

    Under `torchrun --nproc_per_node N --no-python labelstore train ...` (classification) the student
    trains with DistributedDataParallel, each rank on its share of every epoch; rank 0 writes --out."""
    from labelstore.pipeline.dist import dist_env
    from labelstore.trainers.tasks import check_ranks, entry_point

    _check_not_a_file("--out", out)
    _use_storage_options(store_path, storage_options)
    check_ranks(task, "train", dist_env()[1])
    if mode == "online" and not online_teacher:
        _fail("--mode online needs --online-teacher SPEC")
    _classification_only(task, student_weights=student_weights, online_teacher_weights=online_teacher_weights)
    if online_teacher_weights and mode != "online":
        _fail("--online-teacher-weights goes with --mode online --online-teacher SPEC")
    if bool(unlabeled_store) != bool(unlabeled_data):
        _fail("--unlabeled-store and --unlabeled-data go together")
    metrics, line = entry_point(task, "train")(click.get_current_context().params, _warn)
    if metrics is None:  # a rank other than 0
        return
    if as_json:
        return _echo_json(metrics)
    click.echo(line)


@main.command()
@click.option("--task", type=TASKS, default="classification", show_default=True)
@click.option("--out", default="runs/demo", show_default=True, type=click.Path())
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout (the log goes to stderr).")
def demo(task: str, out: str, seed: int, quiet: bool, as_json: bool) -> None:
    """The end-to-end demo on built-in generated data (a few CPU minutes)."""
    from labelstore.trainers.tasks import entry_point

    with _stdout_to_stderr(as_json):
        r = entry_point(task, "demo")(out, seed, not quiet, click.echo)
    if as_json:
        _echo_json(r)


@main.command()
@click.argument("task")
@click.option("--out", default=None, type=click.Path(),
              help="Setup (data, teacher, store) and one JSON per (arm, seed); a rerun resumes from them.  "
                   "[default: runs/experiment-TASK]")
@click.option("--seeds", type=POSITIVE, default=5, show_default=True, help="Seeds per arm (0..N-1), shared by all arms.")
@click.option("--arms", default=None, help="Comma-separated arms.  [default: the task's arms]")
@click.option("--reference", default=None, help="Arm the paired differences are taken against.  [default: the task's]")
@click.option("--recipe", default="{}", show_default=True,
              help="JSON object of setup overrides (e.g. '{\"n_train\": 200}' for a quick run); "
                   "used only when OUT has no setup yet.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (nothing else).")
def experiment(task: str, out: str | None, seeds: int, arms: str | None, reference: str | None, recipe: str,
               quiet: bool, as_json: bool) -> None:
    """Train students N seeds per arm, paired by seed; mean and 95 % interval per arm.

    TASK: a task with an experiment (classification, ...); an unknown arm's error lists the task's arms.
    """
    import os
    import shlex

    from labelstore.trainers.experiment import format_table, run_experiment, save_json
    from labelstore.trainers.tasks import experiment_module

    mod = experiment_module(task)
    out = out or f"runs/experiment-{task}"
    try:
        overrides = json.loads(recipe)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e})", param_hint="--recipe") from None
    if not isinstance(overrides, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--recipe")
    log = (lambda m: click.echo(m, err=True)) if not quiet else None
    meta = mod.setup(out, echo=log or (lambda m: None), **overrides)
    names = [a.strip() for a in (arms or ",".join(mod.DEFAULT_ARMS)).split(",") if a.strip()]
    result = run_experiment(mod.make_arms(meta, names, progress=False), list(range(seeds)), mod.METRIC,
                            reference or mod.REFERENCE, out_dir=out, log=log)
    result["setup"] = meta
    invocation = "labelstore experiment " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    save_json(result, os.path.join(out, "result.json"), invocation)
    if as_json:
        _echo_json({"invocation": invocation, **result})
    else:
        click.echo(format_table(result, invocation))
        click.echo(mod.teacher_line(meta))


@main.command()
@click.option("--images", type=POSITIVE, default=2048, show_default=True, help="Images of the built-in data to run on.")
@click.option("--only-image", is_flag=True, help="Skip the video tasks' figures.")
@click.option("--size", type=POSITIVE, default=32, show_default=True,
              help="View size of figures 1-3 (32: the shapes data; larger: 500x375 JPEGs, e.g. 224 on a GPU).")
@click.option("--scale", is_flag=True,
              help="Instead: every read path of a synthetic ImageNet-1k-size store written through the real "
                   "teacher stage (trainers/bench_scale.py; disk- and CPU-heavy at the default size).")
@click.option("--samples", default=1_281_167, show_default=True, help="(--scale) samples of the synthetic store.")
@click.option("--epochs", default=4, show_default=True, help="(--scale) epochs of the synthetic store.")
@click.option("--workers", default="0,2,4", show_default=True, help="(--scale) DataLoader worker counts to measure.")
@click.option("--store", "store_path", default=None, type=click.Path(),
              help="(--scale) write the store here and keep it (reused when it is already complete); "
                   "default: a temporary directory, removed after.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout (the log goes to stderr).")
def bench(images: int, only_image: bool, size: int, scale: bool, samples: int, epochs: int, workers: str,
          store_path: str | None, as_json: bool) -> None:
    """Throughput and size ratios, measured side by side in one run."""
    with _stdout_to_stderr(as_json):
        if scale:
            from labelstore.trainers.bench_scale import run_scale

            try:
                counts = tuple(int(w) for w in workers.split(",") if w.strip())
            except ValueError:
                _fail(f"--workers: a comma-separated list of worker counts, got {workers!r}")
            if samples < 1 or epochs < 1:
                _fail(f"--samples and --epochs must be >= 1, got {samples}, {epochs}")
            r = run_scale(n=samples, epochs=epochs, echo=click.echo, workers=counts, path=store_path)
        else:
            from labelstore.trainers.bench import run_bench

            r = run_bench(n_images=images, echo=click.echo, extra=not only_image, size=size)
    if as_json:
        _echo_json(r)


if __name__ == "__main__":
    main()
