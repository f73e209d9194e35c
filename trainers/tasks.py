"""The task registry: task name -> the entry points `labelstore teach|train|demo --task NAME` runs.

An entry point is "module:function", imported only when its command runs:

  teach(options: dict, warn) -> (stats, summary line)       options: the CLI's parsed options, plus
  train(options: dict, warn) -> (metrics or None, line)      rank / world_size / local_rank / device
  demo(out, seed, progress, echo) -> dict (the results)

`experiment`: the module behind `labelstore experiment TASK`, or None. It defines
  METRIC (the key summarised), ARMS (name -> arm settings), DEFAULT_ARMS, REFERENCE,
  setup(out, echo, **recipe) -> meta (JSON-ready; made once per output directory, reused after),
  make_arms(meta, names, progress) -> {name: seed -> metrics dict},
  teacher_line(meta) -> str (the teacher's figure, printed under the table).

`ranks`: whether the task's teach and train run as several processes (torchrun / --world-size).
A new task adds one Entry here (docs/adding-a-task.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from labelstore.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    teach: str
    train: str
    demo: str
    ranks: bool = False
    experiment: str | None = None


TASKS: dict[str, Entry] = {
    "classification": Entry(teach="labelstore.trainers.classification_cli:teach_command",
                            train="labelstore.trainers.classification_cli:train_command",
                            demo="labelstore.trainers.classification_cli:demo_command", ranks=True,
                            experiment="labelstore.trainers.experiment_classification"),
    "retrieval": Entry(teach="labelstore.trainers.retrieval_cli:teach_command",
                       train="labelstore.trainers.retrieval_cli:train_command",
                       demo="labelstore.trainers.retrieval_demo:demo_command",
                       experiment="labelstore.trainers.experiment_retrieval"),
    "videoqa": Entry(teach="labelstore.trainers.videoqa_cli:teach_command",
                     train="labelstore.trainers.videoqa_cli:train_command",
                     demo="labelstore.trainers.videoqa_demo:demo_command",
                     experiment="labelstore.trainers.experiment_videoqa"),
}


def entry_point(task: str, command: str) -> Callable:
    """The function behind `labelstore COMMAND --task TASK`."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: unknown task; choose one of {', '.join(TASKS)}")
    module, _, name = getattr(TASKS[task], command).partition(":")
    return getattr(importlib.import_module(module), name)


def experiment_module(task: str):
    """The module behind `labelstore experiment TASK` (see the contract above)."""
    if TASKS.get(task) is None or TASKS[task].experiment is None:
        have = [t for t, e in TASKS.items() if e.experiment]
        raise ConfigError(f"experiment {task!r}: no experiment for this task; choose one of {', '.join(have)}")
    return importlib.import_module(TASKS[task].experiment)


def check_ranks(task: str, command: str, world_size: int) -> None:
    """ConfigError when a one-process task is started as several processes."""
    if world_size > 1 and not TASKS[task].ranks:
        if command == "teach":
            raise ConfigError(f"--task {task} is taught by one process (world size {world_size} given)")
        raise ConfigError(f"--task {task} trains in one process (torchrun / WORLD_SIZE > 1 given)")
