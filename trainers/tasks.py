"""The task registry, the one list of tasks: task name -> what `labelstore teach|train|demo --task NAME`,
`labelstore experiment NAME` and `labelstore inspect|verify STORE` (by the store's attribute "task") run.

Every entry point is a "module:function" string, imported only when its command runs (so
`labelstore --help` imports nothing of the tasks); None where the task has no such command:

  teach(common, options, warn) -> (stats, summary line)      common: labelstore.cli_options.TeachCommon
  train(common, options, warn) -> (metrics or None, line)    / TrainCommon; options: the task's option
        class below (None when the task has none), both as the CLI parsed them; warn(message or None)
  demo(out, seed, progress, echo) -> dict (the results)
  inspect(store, scheduler=None, warn=...) -> (stats, lines)  stats: what `inspect --json` prints,
        {"per_epoch": {name: [value per epoch]}, "histograms": {name: {"edges", "counts"}}, ...};
        lines: printed under the per-epoch table; warn(message or None) for stderr warnings
  report(store, stats, info, scheduler=None[, data=None]) -> (HTML sections, {name: PNG bytes}):
        the task's part of `inspect --report` (labelstore.report draws the page and the per-epoch
        table); `data` (the --data spec) only when `gallery` is True
  verify(store, data_spec, teacher=, samples=, seed=, device=) -> report dict ("ok": bool)

`teach_options` / `train_options`: "module:Class", the dataclass of the options the task adds to
`labelstore teach|train` (fields declared with labelstore.cli_options.option, each a click option;
`trainers/videoqa_options.py` is an example). Its module must be light (no torch): `labelstore teach
--help` imports every task's to list them.

`experiment`: the module behind `labelstore experiment TASK`, or None. It defines
  METRIC (the key summarised), ARMS (name -> arm settings), DEFAULT_ARMS, REFERENCE,
  setup(out, echo, **recipe) -> meta (JSON-ready; made once per output directory, reused after),
  make_arms(meta, names, progress) -> {name: seed -> metrics dict},
  teacher_line(meta) -> str (the teacher's figure, printed under the table),
  optionally result_line(result) -> str (a verdict printed under that, e.g. a testbed's gate).

`ranks`: whether the task's teach and train run as several processes (torchrun / --world-size).
`gallery`: whether `inspect --report --data DATA` adds replayed views (the report takes data=).

A new task adds one Entry to TASKS (or, from outside the package, one `register(name, Entry(...))`);
its code lives in its own modules (docs/adding-a-task.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from labelstore.errors import ConfigError, StoreError


@dataclass(frozen=True)
class Entry:
    teach: str | None = None
    train: str | None = None
    teach_options: str | None = None
    train_options: str | None = None
    demo: str | None = None
    inspect: str | None = None
    report: str | None = None
    verify: str | None = None
    experiment: str | None = None
    ranks: bool = False
    gallery: bool = False


TASKS: dict[str, Entry] = {
    "classification": Entry(teach="labelstore.trainers.classification_cli:teach_command",
                            train="labelstore.trainers.classification_cli:train_command",
                            teach_options="labelstore.trainers.classification_options:ClassificationTeachOptions",
                            train_options="labelstore.trainers.classification_options:ClassificationTrainOptions",
                            demo="labelstore.trainers.classification_cli:demo_command",
                            inspect="labelstore.pipeline.classification_inspect:inspect_stats",
                            report="labelstore.pipeline.classification_inspect:report_section",
                            verify="labelstore.pipeline.verify:verify_command",
                            experiment="labelstore.trainers.experiment_classification", ranks=True, gallery=True),
    "retrieval": Entry(teach="labelstore.trainers.retrieval_cli:teach_command",
                       train="labelstore.trainers.retrieval_cli:train_command",
                       teach_options="labelstore.trainers.retrieval_options:RetrievalTeachOptions",
                       train_options="labelstore.trainers.retrieval_options:RetrievalTrainOptions",
                       demo="labelstore.trainers.retrieval_demo:demo_command",
                       inspect="labelstore.pipeline.retrieval_inspect:inspect_stats",
                       report="labelstore.pipeline.retrieval_inspect:report_section",
                       experiment="labelstore.trainers.experiment_retrieval"),
    "videoqa": Entry(teach="labelstore.trainers.videoqa_cli:teach_command",
                     train="labelstore.trainers.videoqa_cli:train_command",
                     teach_options="labelstore.trainers.videoqa_options:VideoQATeachOptions",
                     train_options="labelstore.trainers.videoqa_options:VideoQATrainOptions",
                     demo="labelstore.trainers.videoqa_demo:demo_command",
                     inspect="labelstore.pipeline.videoqa_inspect:inspect_stats",
                     report="labelstore.pipeline.videoqa_inspect:report_section",
                     verify="labelstore.pipeline.videoqa_verify:verify_command",
                     experiment="labelstore.trainers.experiment_videoqa"),
}


# Experiments that are not a task's own (`labelstore experiment NAME`): testbeds built so one method
# can show its effect (docs/results.md). Same module contract as Entry.experiment.
TESTBEDS: dict[str, str] = {
    "ferkd": "labelstore.trainers.experiment_ferkd",
    "adl": "labelstore.trainers.experiment_adl",
    "radi": "labelstore.trainers.experiment_radi",
}


def register(name: str, entry: Entry) -> None:
    """Add a task defined outside the package (its modules importable by the "module:function" strings)."""
    if name in TASKS:
        raise ConfigError(f"task {name!r} is registered already")
    TASKS[name] = entry


def _load(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _have(command: str) -> str:
    return ", ".join(t for t, e in TASKS.items() if getattr(e, command)) or "none"


def entry_point(task: str, command: str) -> Callable:
    """The function behind `labelstore COMMAND --task TASK` (teach, train, demo)."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: unknown task; choose one of {', '.join(TASKS)}")
    ref = getattr(TASKS[task], command)
    if ref is None:
        raise ConfigError(f"--task {task}: the task has no `labelstore {command}`; tasks with it: {_have(command)}")
    return _load(ref)


def option_class(task: str, command: str) -> type | None:
    """The dataclass of the options `task` adds to `labelstore COMMAND` (teach, train), or None."""
    ref = getattr(TASKS[task], f"{command}_options")
    return None if ref is None else _load(ref)


def store_entry_point(store, command: str) -> Callable:
    """The function behind `labelstore COMMAND STORE` (inspect, report, verify) for the store's task."""
    entry = TASKS.get(store.task)
    if entry is None or getattr(entry, command) is None:
        raise StoreError(f"{store.path}: {command} does not know task {store.task!r} (tasks with it: {_have(command)})")
    return _load(getattr(entry, command))


def gallery_tasks() -> list[str]:
    """The tasks whose report shows replayed views (`inspect --report --data`)."""
    return [t for t, e in TASKS.items() if e.gallery]


def inspect_store(store, scheduler: str | None = None, warn: Callable[[str | None], None] = lambda m: None
                  ) -> tuple[dict, list[str]]:
    """(stats, lines) of `labelstore inspect STORE`: the store's task's inspect function; on a damaged
    store one StoreError naming the damage (labelstore.views.name_damage)."""
    from labelstore.views import name_damage

    return name_damage(store, store_entry_point(store, "inspect"), scheduler=scheduler, warn=warn)


def write_report(path: str, store, stats: dict, info: dict, scheduler: str | None = None,
                 data: str | None = None) -> None:
    """`labelstore inspect STORE --report PATH`: the page (labelstore.report.write_report) with the store's
    task's report section; `data` (the --data spec) for the gallery of tasks that have one."""
    from labelstore.report import write_report as write_page
    from labelstore.views import name_damage

    extra = {} if data is None else {"data": data}
    sections, figures = name_damage(store, store_entry_point(store, "report"), stats, info, scheduler=scheduler,
                                    **extra)
    write_page(path, info, stats, sections, figures)


def experiment_names() -> list[str]:
    """Every NAME of `labelstore experiment NAME`: the tasks' experiments, then the testbeds."""
    return [t for t, e in TASKS.items() if e.experiment] + list(TESTBEDS)


def experiment_module(name: str):
    """The module behind `labelstore experiment NAME` (see the contract above): a task's or a testbed's."""
    entry = TASKS.get(name)
    ref = entry.experiment if entry is not None else TESTBEDS.get(name)
    if ref is None:
        raise ConfigError(f"experiment {name!r}: no such experiment; choose one of {', '.join(experiment_names())}")
    return importlib.import_module(ref)


def check_ranks(task: str, command: str, world_size: int) -> None:
    """ConfigError when a one-process task is started as several processes."""
    if world_size > 1 and not TASKS[task].ranks:
        if command == "teach":
            raise ConfigError(f"--task {task} is taught by one process (world size {world_size} given)")
        raise ConfigError(f"--task {task} trains in one process (torchrun / WORLD_SIZE > 1 given)")
