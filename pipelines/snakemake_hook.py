"""A YAML error in ``snakemake --configfile FILE`` names its line and column, as
``python -m pipelines grid FILE`` does.

Snakemake 9 reads ``--configfile`` on its command line, before the Snakefile (and so before any
check of ours) runs, and its loader (``snakemake.common.configfile._load_configfile``) turns
PyYAML's error, which carries the position, into "Config file is not valid JSON or YAML" with no
position. This module wraps that loader: when it fails on a file, the file is read again with
PyYAML and the error names the file, the line and the column, in one line
(``Config file configs/ablations/x.yaml: line 4, column 7: expected ',' or ']' ...``).

It has to be in place before Snakemake's command line is read, so ``make setup`` writes a
``.pth`` line into the environment (:func:`write_pth`; Python runs such a line when it
starts). All that line does is load this file by its path (as ``pipelines_snakemake_hook``:
the ``pipelines`` package itself is not imported, so a Snakefile of another checkout still
imports its own) and add one import finder, which acts on the import of that one Snakemake
module and on nothing else; a file that loads is never read twice.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "snakemake.common.configfile"
PTH_NAME = "pipelines_snakemake_hook.pth"
#: the .pth line (one line: Python runs a line that starts with ``import``)
PTH_LINE = "import sys, importlib.util as u; exec({code!r})\n"
#: what it runs ({path}: this file)
PTH_CODE = ("try:\n"
            "    s = u.spec_from_file_location('pipelines_snakemake_hook', {path!r})\n"
            "    m = u.module_from_spec(s)\n"
            "    s.loader.exec_module(m)\n"
            "    sys.modules[s.name] = m\n"
            "    m.install()\n"
            "except Exception:\n"
            "    pass  # the checkout moved: Snakemake's own message then\n")


def _yaml_problem(path) -> str | None:
    """PyYAML's error in ``path`` as one line with its position, or None."""
    import yaml

    from pipelines.grid.schema import yaml_error_line

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except yaml.YAMLError as err:
        return yaml_error_line(err)
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _wrap(module) -> None:
    """Wrap the loader of Snakemake's module ``module`` (once)."""
    load = module._load_configfile
    if getattr(load, "_names_the_line", False):
        return

    def _load_configfile(configpath_or_obj, filetype="Config"):
        try:
            return load(configpath_or_obj, filetype)
        except module.WorkflowError:
            if isinstance(configpath_or_obj, (str, os.PathLike)):
                problem = _yaml_problem(configpath_or_obj)
                if problem is not None:
                    raise module.WorkflowError(
                        f"{filetype} file {os.fspath(configpath_or_obj)}: {problem}") from None
            raise

    _load_configfile._names_the_line = True
    module._load_configfile = _load_configfile


class _Finder(importlib.abc.MetaPathFinder):
    """Finds Snakemake's config file module as usual and wraps its loader once it is loaded."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _wrap(module)

        spec.loader.exec_module = exec_and_wrap
        return spec


def install() -> None:
    """Put the finder in place (and wrap the loader at once if Snakemake's module is loaded)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if TARGET in sys.modules:
        _wrap(sys.modules[TARGET])


def write_pth() -> str:
    """Write the ``.pth`` line into this interpreter's environment; returns its path."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
    code = PTH_CODE.format(path=os.path.abspath(__file__))
    with open(path, "w", encoding="utf-8") as f:
        f.write(PTH_LINE.format(code=code))
    return path
