"""Every command the READMEs show runs.

The rule, per line of every ```bash / ```sh block of every ``README*.md`` of the checkout (the
top ``README.md`` and the per-folder ones: ``tests.conftest.readme_files``; ``\\`` continuations
joined, ``#`` comments and leading ``VAR=value`` assignments dropped):

* ``snakemake ...`` (also ``.venv/bin/snakemake``) is **dry-run as written** (``-n`` added) from
  the repository root, in a fresh temporary folder (``--directory``), so nothing touches the
  checkout's ``results/``. Without ``--configfile`` the Snakefile's default
  (``configs/ablations/demo.yaml``) is passed explicitly (it is looked up in the working
  directory); ``--profile slurm`` becomes ``--profile workflow/profiles/slurm`` (what the link
  that ``make setup`` makes points to); a dataset path under ``/datasets/`` becomes a stand-in
  with the folders the ablation's model configs read. A dry run must exit 0. Lines that
  differ only in what a dry run ignores (``--cores``, ``--keep-going``, ``--rerun-incomplete``,
  ``-n``, ``--lint``: the lint is ``test_dry_run.test_lint_is_clean``'s) are run once.
* ``python -m pipelines ...`` (also ``.venv/bin/python``) must parse: a line with
  placeholders (``CONFIG``, ``[--opt ...]``, ``...``, ``USER@HOST``) is a synopsis, so its
  command must exist and every ``--option`` it names must be one of that command's; a concrete
  line must parse as a whole, and one that only checks (``--check``, ``--help``) is run.
* ``make TARGET`` names a Makefile target; ``bash``/``sudo bash SCRIPT`` an existing script;
  ``.venv/bin/TOOL`` and ``pytest`` a tool installed in the environment (pytest's paths exist).
* Set-up and viewing commands of other tools (``conda``, ``pip``, ``xdg-open``, ``ls``) are
  not run; any other program fails this test until a rule is given for it.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, readme_files, run_cli
from tests.workflow.conftest import snakemake
from tests.workflow.fake_data import fake_dataset

READMES = tuple(str(p.relative_to(REPO)) for p in readme_files())
NOT_RUN = {"conda", "pip", "xdg-open", "ls"}
BLOCK = re.compile(r"^[ \t]*```(?:bash|sh)[ \t]*\n(.*?)^[ \t]*```", re.M | re.S)
PLACEHOLDER = re.compile(r"[\[\]|]|\.\.\.|^[A-Z][A-Z_]*(\.\w+)?$|[A-Z]{2,}@|^[a-z]=[a-z]$")
BIN = Path(sys.executable).parent


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line of the READMEs' shell blocks."""
    out = []
    for name in READMES:
        text = (REPO / name).read_text()
        for block in BLOCK.finditer(text):
            line_no = text[:block.start(1)].count("\n") + 1
            pending, start = "", line_no
            for i, raw in enumerate(block.group(1).splitlines()):
                start = start if pending else line_no + i
                if raw.rstrip().endswith("\\"):
                    pending += raw.rstrip()[:-1] + " "
                    continue
                line, pending = pending + raw, ""
                argv = shlex.split(line, comments=True)
                while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
                    argv = argv[1:]
                if argv:
                    out.append((f"{name}:{start}: {' '.join(line.split())}", argv))
    return out


def program(argv: list[str]) -> str:
    return Path(argv[0]).name


def test_blocks_are_found():
    found = {program(argv) for _, argv in commands()}
    assert {"snakemake", "python", "make"} <= found, found


def test_every_program_has_a_rule():
    known = NOT_RUN | {"snakemake", "python", "make", "bash", "sudo", "pytest", "mlflow",
                       "optuna-dashboard"}
    unknown = [where for where, argv in commands() if program(argv) not in known]
    assert not unknown, unknown


def dry_run_argv(argv: list[str], tmp_path: Path) -> list[str]:
    """A README snakemake line -> the arguments of its dry run in ``tmp_path``."""
    args = list(argv[1:])
    if "--profile" in args and args[args.index("--profile") + 1] == "slurm":
        args[args.index("--profile") + 1] = str(REPO / "workflow" / "profiles" / "slurm")
    if "--configfile" in args:
        i = args.index("--configfile") + 1
        args[i] = str(REPO / args[i])
    else:
        args += ["--configfile", str(REPO / "configs" / "ablations" / "demo.yaml")]
    if "--config" in args:
        i = args.index("--config") + 1
        if "/datasets/" in args[i]:
            ablation = yaml.safe_load(Path(args[args.index("--configfile") + 1]).read_text())
            configs = [v["config"] for v in ablation["grid"]["variants"].values()]
            data = fake_dataset(tmp_path / "datasets", *configs)
            args[i] = re.sub(r"/datasets/[^,}\s]+", str(data), args[i])
        for j in range(i, len(args)):  # `weights=/datasets/...`: a folder with each file named
            if args[j].startswith("weights=/datasets/"):
                args[j] = f"weights={fake_weights(tmp_path / 'weights', args)}"
    return scheduling_free(args) + ["-n"]


def fake_weights(folder: Path, args: list[str]) -> Path:
    """A weights folder holding a (placeholder) file for every pretrained checkpoint the
    ablation's model configs name, under the name the weights folder wants."""
    from pipelines.grid import resolved_base
    from pipelines.grid import weights

    ablation = yaml.safe_load(Path(args[args.index("--configfile") + 1]).read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for variant in ablation["grid"]["variants"].values():
        for _, uri in weights.pretrained_uris(resolved_base(REPO / variant["config"])):
            (folder / weights.file_name(uri)).write_bytes(b"placeholder")
    return folder


def scheduling_free(args: list[str]) -> list[str]:
    """``args`` without what a dry run ignores (``--cores N``, ``--keep-going``,
    ``--rerun-incomplete``, ``-n``) and without ``--lint`` (``test_lint_is_clean``'s)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--cores":
            skip = True
        elif arg not in ("--keep-going", "--rerun-incomplete", "-n", "--lint"):
            out.append(arg)
    return out


def snakemake_lines() -> list:
    """The README's snakemake lines, once per distinct dry run."""
    seen, out = set(), []
    for where, argv in commands():
        key = tuple(scheduling_free(argv[1:]))
        if program(argv) == "snakemake" and key not in seen:
            seen.add(key)
            out.append(pytest.param(where, argv, id=where.split(": ")[0]))
    return out


@pytest.mark.parametrize("where, argv", snakemake_lines())
def test_snakemake_commands_dry_run(tmp_path, where, argv):
    work = tmp_path / "work"
    work.mkdir()
    # the helper adds --snakefile, --directory and --cores 2
    proc = snakemake(work, None, *dry_run_argv(argv, tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{where}\n{out[-2500:]}"
    assert "This was a dry-run" in out, f"{where}\n{out[-2500:]}"
    assert not (work / "results").exists()


def subcommand_options(parser, names: list[str]):
    """The sub-parser of ``names`` (``['data', 'synthetic']``) and its option strings."""
    for name in names:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        assert name in sub.choices, f"no command {name!r}"
        parser = sub.choices[name]
    return parser, {s for a in parser._actions for s in a.option_strings}


def cli_lines() -> list[tuple[str, list[str]]]:
    return [(where, argv[3:]) for where, argv in commands()
            if program(argv) == "python" and argv[1:3] == ["-m", "pipelines"]]


def test_cli_commands_parse():
    from pipelines.cli import build_parser

    parser = build_parser()
    checked = 0
    for where, args in cli_lines():
        if not args or args == ["--help"]:
            continue
        names = args[:2] if args[0] == "data" else args[:1]
        sub, options = subcommand_options(parser, names)
        if any(PLACEHOLDER.search(a) for a in args):
            named = {a.split("=")[0] for a in args if a.startswith("--")}
            assert named <= options, f"{where}: unknown options {sorted(named - options)}"
        else:
            try:
                parser.parse_args(args)
            except SystemExit as err:
                pytest.fail(f"{where}: does not parse (exit {err.code})")
        checked += 1
    assert checked >= 10


def test_cli_checks_run():
    runs = [(where, args) for where, args in cli_lines()
            if "--check" in args or args == ["--help"]]
    assert runs
    for where, args in runs:
        proc = run_cli(*args)
        assert proc.returncode == 0, f"{where}\n{proc.stderr[-2000:]}"


def test_other_commands_name_what_exists():
    makefile = (REPO / "Makefile").read_text()
    for where, argv in commands():
        prog = program(argv)
        if prog == "sudo":
            argv, prog = argv[1:], program(argv[1:])
        if prog == "make":
            for target in argv[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), where
        elif prog == "bash":
            assert (REPO / argv[1]).is_file(), where
        elif prog in ("mlflow", "optuna-dashboard", "pytest"):
            assert (BIN / prog).is_file(), where
            if prog == "pytest":
                for path in (a for a in argv[1:] if not a.startswith("-") and "/" in a):
                    assert (REPO / path).exists(), f"{where}: {path}"
