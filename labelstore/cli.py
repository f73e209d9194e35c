"""The `labelstore` command line: a thin shell over labelstore/, pipeline/ and trainers/.

This is the one module of labelstore/ that imports pipeline/ and trainers/, and only inside
each command, so `import labelstore` stays light.
"""

from __future__ import annotations

import json
import sys

import click

import labelstore
from labelstore import cli_options
from labelstore.cli_options import (NONNEGATIVE, POSITIVE, SEED, SPEC_HELP, STORAGE_HELP, STORE, TeachCommon,
                                    TrainCommon)
from labelstore.errors import ConfigError, LabelstoreError


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


STORAGE_OPTIONS = click.option("--storage-options", default=None, metavar="JSON", help=STORAGE_HELP)


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


def weights_option(name: str, role: str):
    """--teacher-weights of verify: a state_dict file for the model."""
    return click.option(name, default=None, type=click.Path(dir_okay=False), metavar="FILE",
                        help=f"(classification) {cli_options.weights_help(role)}")


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


_TASK_KEY = "labelstore.task"


def _given_task(args: list[str], default: str) -> str:
    """The value of --task on a command line (the last one given, as click takes it), before parsing."""
    task = default
    for i, a in enumerate(args):
        if a == "--":
            break
        if a == "--task" and i + 1 < len(args):
            task = args[i + 1]
        elif a.startswith("--task="):
            task = a[len("--task="):]
    return task


class _TaskCommand(click.Command):
    """`labelstore teach|train --task T`: the common options (a labelstore.cli_options class) plus the
    options of task T (its registry entry's teach_options / train_options class), composed when the
    command line is parsed, so importing the CLI imports no task. `--help` lists every task's options
    under a heading of its own; an option of another task than --task is one error line naming it."""

    def __init__(self, name: str, common: type, **kwargs) -> None:
        task = click.Option(["--task"], type=TASKS, default="classification", show_default=True,
                            help="The task (the registry's: labelstore.trainers.tasks).")
        params = [task, *kwargs.pop("params", []), *cli_options.click_params(common)]
        super().__init__(name, params=params, **kwargs)
        self.common = common

    def task_class(self, task: str | None) -> type | None:
        from labelstore.trainers.tasks import TASKS as registry, option_class

        return option_class(task, self.name) if task in registry else None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        cls = self.task_class(ctx.meta.get(_TASK_KEY))
        help_option = self.get_help_option(ctx)
        return [*self.params, *(cli_options.click_params(cls) if cls else []), *([help_option] if help_option else [])]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from labelstore.trainers.tasks import TASKS as registry

        task = _given_task(args, "classification")
        if task not in registry:
            TASKS.convert(task, self.params[0], ctx)  # the choice's own usage error
        ctx.meta[_TASK_KEY] = task
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            owners = {t: hint for t in registry if t != task and (cls := self.task_class(t)) is not None
                      for flag, hint in cli_options.flags(cls).items() if flag == e.option_name}
            if not owners:
                raise
            hint = next((h for h in owners.values() if h), None)
            rest = f"; for --task {task} {hint}" if hint else f", not --task {task} (see labelstore {self.name} --help)"
            raise ConfigError(f"{e.option_name} is for --task {' / '.join(owners)}{rest}") from None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from labelstore.trainers.tasks import TASKS as registry

        def rows(params):
            return [r for p in params if (r := p.get_help_record(ctx)) is not None]

        help_option = self.get_help_option(ctx)
        with formatter.section("Options (every task)"):
            formatter.write_dl(rows([*self.params, *([help_option] if help_option else [])]))
        for task in registry:
            cls = self.task_class(task)
            if cls is not None:
                with formatter.section(f"Options of --task {task}"):
                    formatter.write_dl(rows(cli_options.click_params(cls)))

    def split(self, params: dict) -> tuple[str, object, object]:
        """(task, common options, the task's options or None) from click's parsed values."""
        cls = self.task_class(params["task"])
        return (params["task"], cli_options.from_params(self.common, params),
                None if cls is None else cli_options.from_params(cls, params))


@main.command(cls=_TaskCommand, common=TeachCommon)
@click.pass_context
def teach(ctx: click.Context, **params) -> None:
    """Run the teacher once over every (epoch, sample) view and write the label store.

    Several processes fill one store: `torchrun --nproc_per_node N --no-python labelstore teach ...`
    (RANK / WORLD_SIZE / LOCAL_RANK from the environment, each on cuda:LOCAL_RANK when present),
    or one process per --rank with the same --world-size."""
    import dataclasses

    from labelstore.pipeline import checks
    from labelstore.pipeline.dist import dist_env
    from labelstore.trainers.models import MODELS
    from labelstore.trainers.tasks import check_ranks, entry_point

    task, c, options = ctx.command.split(params)
    weights = getattr(options, "teacher_weights", None)  # a task's state_dict file for the teacher
    checks.check_trained_teacher(c.teacher, MODELS, c.allow_untrained_teacher, weights)
    _check_not_a_file("--out", c.out)
    _use_storage_options(c.out, c.storage_options)
    rank, world_size, local_rank = dist_env(c.rank, c.world_size)
    check_ranks(task, "teach", world_size)
    c = dataclasses.replace(c, rank=rank, world_size=world_size, local_rank=local_rank)
    with _stdout_to_stderr(c.as_json):  # a task's progress lines must not break the JSON
        stats, line = entry_point(task, "teach")(c, options, _warn)
    if c.as_json:
        return _echo_json({"store": c.out, **stats})
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
        if "feature_mismatches" in r:
            click.echo(f"features recomputed on {r['features_checked']} views: {r['feature_mismatches']} outside the "
                       f"codec's bound (worst relative L2 error {r['max_feature_rel_l2']:.2e}, "
                       f"lowest cosine {r['min_feature_cosine']:.6f})")
        for p in r.get("head_problems", []):
            click.echo(f"  classifier: {p}")
        click.echo("OK" if r["ok"] else "FAILED")
    sys.exit(0 if r["ok"] else 1)


@main.command(cls=_TaskCommand, common=TrainCommon)
@click.pass_context
def train(ctx: click.Context, **params) -> None:
    """Train a student on the store's replayed views (from the cache, an online teacher, or no teacher).

    Under `torchrun --nproc_per_node N --no-python labelstore train ...` (classification) the student
    trains with DistributedDataParallel, each rank on its share of every epoch; rank 0 writes --out."""
    from labelstore.pipeline.dist import dist_env
    from labelstore.trainers.tasks import check_ranks, entry_point

    task, c, options = ctx.command.split(params)
    _check_not_a_file("--out", c.out)
    _use_storage_options(c.store_path, c.storage_options)
    check_ranks(task, "train", dist_env()[1])
    if c.mode == "online" and not c.online_teacher:
        _fail("--mode online needs --online-teacher SPEC")
    with _stdout_to_stderr(c.as_json):  # a task's progress lines must not break the JSON
        metrics, line = entry_point(task, "train")(c, options, _warn)
    if metrics is None:  # a rank other than 0
        return
    if c.as_json:
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

    TASK: a task with an experiment (classification, retrieval, videoqa) or a testbed (trainers/tasks.py
    TESTBEDS); an unknown arm's error lists its arms.
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
        if hasattr(mod, "result_line"):  # a testbed's verdict on the table (e.g. RADI's KD gate)
            click.echo(mod.result_line(result))


@main.command()
@click.option("--images", type=POSITIVE, default=2048, show_default=True, help="Images of the built-in data to run on.")
@click.option("--only-image", is_flag=True, help="Skip the video tasks' figures.")
@click.option("--size", type=POSITIVE, default=32, show_default=True,
              help="View size of figures 1-3 (32: the shapes data; larger: 500x375 JPEGs, e.g. 224 on a GPU).")
@click.option("--scale", is_flag=True,
              help="Instead: every read path of a synthetic ImageNet-1k-size store written through the real "
                   "teacher stage (trainers/bench_scale.py; disk- and CPU-heavy at the default size).")
@click.option("--features", "feature_store", is_flag=True,
              help="Instead: feature stores (teach --features) for D = 512 and 2048, both codecs: bytes per view, "
                   "reconstruction error, and the writer's rate against plain file writes (trainers/bench_features.py; "
                   "at most 512 images).")
@click.option("--samples", default=1_281_167, show_default=True, help="(--scale) samples of the synthetic store.")
@click.option("--epochs", default=4, show_default=True, help="(--scale) epochs of the synthetic store.")
@click.option("--workers", default="0,2,4", show_default=True, help="(--scale) DataLoader worker counts to measure.")
@click.option("--store", "store_path", default=None, type=click.Path(),
              help="(--scale) write the store here and keep it (reused when it is already complete); "
                   "default: a temporary directory, removed after.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout (the log goes to stderr).")
def bench(images: int, only_image: bool, size: int, scale: bool, feature_store: bool, samples: int, epochs: int,
          workers: str, store_path: str | None, as_json: bool) -> None:
    """Throughput and size ratios, measured side by side in one run."""
    with _stdout_to_stderr(as_json):
        if feature_store:
            from labelstore.trainers.bench_features import run_feature_bench

            r = run_feature_bench(n_images=min(images, 512), echo=click.echo)
        elif scale:
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
