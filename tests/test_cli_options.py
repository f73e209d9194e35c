"""`labelstore teach|train`: the common options plus each task's own (its registry entry's option class).

Every option is common (read by the CLI or by every task's entry point) or belongs to one task's option
class and is read by that task's entry point; an option of another task than --task is one `error:`
line naming the option and its task; `--help` lists every task's options without importing torch; a
task registered from outside the package brings its options with its one registry line.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labelstore import cli, cli_options
from labelstore.cli_options import TeachCommon, TrainCommon
from labelstore.trainers import tasks

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"teach": TeachCommon, "train": TrainCommon}


def _option_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if "click" in f.metadata}


def _read(fn, var: str) -> set[str]:
    """The attributes `fn` reads of its argument named `var` (c.out, o.top_k, ...)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == var}


@pytest.mark.parametrize("command", ["teach", "train"])
def test_every_option_is_common_or_one_tasks(command):
    common = COMMON[command]
    cli_reads = _read(getattr(cli, command).callback, "c")  # what the command itself does with the common ones
    entries = {t: tasks.entry_point(t, command) for t in ("classification", "retrieval", "videoqa")}
    for name in _option_names(common):
        users = [t for t, fn in entries.items() if name in _read(fn, "c")]
        assert name in cli_reads or users == list(entries), f"--{name}: common, but read only by {users}"
    common_flags = set(cli_options.flags(common)) | {"--task", "--help"}
    for task, fn in entries.items():
        cls = tasks.option_class(task, command)
        assert fn.__annotations__["o"] in (cls, cls.__name__)
        assert not common_flags & set(cli_options.flags(cls)), f"{task} redeclares a common option"
        unread = _option_names(cls) - _read(fn, "o")
        assert not unread, f"{task} {command}: options its entry point never reads: {unread}"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelstore", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args,words", [
    (["teach", "--data", "d", "--teacher", "t.pt", "--similarity-mode", "dense"],
     ["--similarity-mode is for --task retrieval, not --task classification", "labelstore teach --help"]),
    (["teach", "--task", "retrieval", "--captions", "c.jsonl", "--data", "d", "--teacher", "t.pt", "--top-k", "3"],
     ["--top-k is for --task classification / videoqa, not --task retrieval"]),
    (["teach", "--task=videoqa", "--data", "d", "--teacher", "t.pt", "--image-size", "64"],
     ["--image-size is for --task classification, not --task videoqa"]),
    (["train", "--task", "retrieval", "--store", "s.zarr", "--data", "d", "--hot-k", "3"],
     ["--hot-k is for --task videoqa, not --task retrieval", "labelstore train --help"]),
    (["train", "--store", "s.zarr", "--data", "d", "--eval-captions", "c.jsonl"],
     ["--eval-captions is for --task retrieval, not --task classification"]),
    (["train", "--task", "videoqa", "--store", "s.zarr", "--data", "d", "--student-weights", "w.pt"],
     ["--student-weights is for --task classification; for --task videoqa give a checkpoint"]),
])
def test_an_option_of_another_task_is_one_error_line(tmp_path, args, words):
    p = _cli(*args, "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_help_lists_each_tasks_options_without_importing_torch():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from labelstore.cli import main\n"
            "for cmd in ('teach', 'train'):\n"
            "    r = CliRunner().invoke(main, [cmd, '--help'], prog_name='labelstore')\n"
            "    assert r.exit_code == 0, r.output\n"
            "    print(r.output)\n"
            "assert 'torch' not in sys.modules, 'help imported torch'\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    teach, train = p.stdout.split("Usage: labelstore train")
    for section, flags in ((teach, ["--unlabeled", "--policy", "--render-device"]),
                           (teach.split("Options of --task retrieval")[1], ["--captions", "--similarity-mode"]),
                           (teach.split("Options of --task videoqa")[1], ["--questions", "--frames", "--top-k"]),
                           (train.split("Options of --task videoqa")[1], ["--radi-rank", "--margins", "--alpha"])):
        for flag in flags:
            assert flag in section, flag
    common_teach = teach.split("Options of --task")[0]
    assert "--policy" not in common_teach and "--captions" not in common_teach and "--data" in common_teach
    assert "[default: 8" in teach.split("Options of --task videoqa")[1]  # videoqa's own --frames default


def test_a_task_registered_outside_brings_its_options(tmp_path):
    """One register line with teach_options: `teach --task toy --layers 3` hands the entry point typed
    (TeachCommon, ToyOptions); --layers with another task is refused naming toy."""
    code = textwrap.dedent('''
        import json, sys
        from dataclasses import dataclass, asdict
        from labelstore.cli import main
        from labelstore.cli_options import POSITIVE, TeachCommon, option
        from labelstore.trainers.tasks import Entry, register

        @dataclass(frozen=True)
        class ToyOptions:
            layers: int = option("--layers", type=POSITIVE, default=2, show_default=True, help="Layers.")

        def teach(c, o, warn):
            assert isinstance(c, TeachCommon) and isinstance(o, ToyOptions)
            return {"layers": o.layers, "epochs": c.epochs, "seed": c.seed}, f"toy {o.layers}"

        register("toy", Entry(teach="__main__:teach", teach_options="__main__:ToyOptions"))
        main(sys.argv[1:])
    ''')
    base = [sys.executable, "-c", code, "teach", "--data", "d", "--teacher", "t.pt", "--out", str(tmp_path / "o")]
    p = subprocess.run([*base, "--task", "toy", "--layers", "3", "--seed", "7", "--json"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert '"layers": 3' in p.stdout and '"seed": 7' in p.stdout and '"epochs": 4' in p.stdout
    p = subprocess.run([*base, "--layers", "3"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == ("error: --layers is for --task toy, not --task classification "
                                                     "(see labelstore teach --help)"), p.stderr
