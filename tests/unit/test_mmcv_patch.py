"""The GPU-cluster install route without a GPU: mmcv 2.1.0's CUDA sources patched for
torch 2.13 (workflow/patches/mmcv-2.1.0-torch2.patch), the one-line refusal of FORCE_CUDA=1
without nvcc before anything is downloaded or built, and the build script's other prerequisite
checks. The patch tests that need the PyPI sdist are slow (one download, cached in .pytest_cache);
the rest are offline and take seconds. The build itself needs nvcc and a CUDA torch:
workflow/README.md, "On a GPU cluster"."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PATCH = REPO / "workflow" / "patches" / "mmcv-2.1.0-torch2.patch"
SCRIPTS = REPO / "workflow" / "scripts"
PREFLIGHT = SCRIPTS / "cuda_preflight.sh"
BUILD = SCRIPTS / "build_mmcv_cuda.sh"
PATCHED = ("mmcv/ops/csrc/common/pytorch_cuda_helper.hpp",
           "mmcv/ops/csrc/pytorch/cuda/ms_deform_attn_cuda.cu")
THC_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]THC/', re.M)


def _path_without(*tools: str) -> str:
    """This PATH minus every folder holding one of ``tools``."""
    keep = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, t)) for t in tools)]
    return os.pathsep.join(keep)


def _run(cmd, env, cwd=None, timeout=60):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _fake_cuda_home(tmp_path: Path, release: str = "13.0") -> Path:
    home = tmp_path / f"cuda-{release}"
    _exe(home / "bin" / "nvcc",
         f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.88'\n")
    return home


# ---------------------------------------------------------------- the patch, offline


def _hunks(text: str) -> dict[str, list[list[str]]]:
    files: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("+++ b/"):
            current = files.setdefault(line[6:], [])
        elif line.startswith("@@") and current is not None:
            current.append([])
        elif current and line[:1] in "+- " and not line.startswith(("---", "+++")):
            current[-1].append(line)
    return files


def test_patch_touches_the_two_thc_includes_with_a_reason_per_hunk():
    text = PATCH.read_text()
    files = _hunks(text)
    assert sorted(files) == sorted(PATCHED)
    for name, hunks in files.items():
        assert len(hunks) == 1, name
        for hunk in hunks:
            removed = [ln[1:] for ln in hunk if ln.startswith("-")]
            added = [ln[1:] for ln in hunk if ln.startswith("+")]
            assert removed == ["#include <THC/THCAtomics.cuh>"], name
            assert "#include <ATen/cuda/Atomic.cuh>" in added, name
            # the why, in the patched source itself
            assert any(ln.startswith("// mmcv-2.1.0-torch2.patch: ") for ln in added), name
    # the preamble names the sdist it was made for, the same one the build script checks
    sha = re.search(r"SDIST_SHA256=([0-9a-f]{64})", BUILD.read_text()).group(1)
    assert sha in text.split("diff ", 1)[0]


def test_torch_headers_explain_the_patch():
    """torch's own headers: no THC/ (why the patch), Atomic.cuh present (what it points at), and
    AT_ASSERTM still defined (why the patch does not define it)."""
    from torch.utils.cpp_extension import include_paths

    root = Path(include_paths()[0])
    if not (root / "ATen").is_dir():
        pytest.skip(f"this torch ships no C++ headers ({root})")
    assert not (root / "THC").exists()
    assert (root / "ATen" / "cuda" / "Atomic.cuh").is_file()
    exception_h = (root / "c10" / "util" / "Exception.h").read_text()
    for macro in ("AT_ASSERTM", "AT_ASSERT", "AT_ERROR"):
        assert re.search(rf"^#define {macro}\(", exception_h, re.M), macro


# ---------------------------------------------------------------- prerequisites, offline


def test_preflight_refuses_without_nvcc_in_one_line(tmp_path):
    env = dict(os.environ, PATH=_path_without("nvcc"), CUDA_HOME=str(tmp_path / "no-cuda"))
    env.pop("CUDA_PATH", None)
    done = _run(["bash", str(PREFLIGHT)], env)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FORCE_CUDA=1: no nvcc"), done.stderr


def test_preflight_finds_nvcc_where_torch_will(tmp_path):
    home = _fake_cuda_home(tmp_path)
    env = dict(os.environ, PATH=_path_without("nvcc"), CUDA_HOME=str(home))
    done = _run(["bash", str(PREFLIGHT)], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cuda_preflight: nvcc 13.0 at {home}/bin/nvcc"
    # nvcc on PATH, no CUDA_HOME
    env = dict(os.environ, PATH=f"{home}/bin{os.pathsep}{_path_without('nvcc')}")
    env.pop("CUDA_HOME", None)
    env.pop("CUDA_PATH", None)
    done = _run(["bash", str(PREFLIGHT)], env)
    assert done.returncode == 0 and f"{home}/bin/nvcc" in done.stdout, done.stderr


def test_install_sh_refuses_force_cuda_without_nvcc_before_anything(tmp_path):
    """install.sh itself, from a copy of the scripts in a scratch tree (it works in the tree it
    sits in, so the real .venv cannot be touched): one line, exit 1, nothing created. PYTHON is
    /bin/false so that a missing refusal would stop at the Python check, not install."""
    tree = tmp_path / "repo"
    (tree / "workflow" / "scripts").mkdir(parents=True)
    for name in ("install.sh", "cuda_preflight.sh", "install_profile.sh", "build_mmcv_cuda.sh"):
        shutil.copy(SCRIPTS / name, tree / "workflow" / "scripts" / name)
    env = dict(os.environ, PATH=_path_without("nvcc"), CUDA_HOME=str(tmp_path / "no-cuda"),
               FORCE_CUDA="1", PYTHON="/bin/false")
    done = _run(["bash", str(tree / "workflow" / "scripts" / "install.sh")], env, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FORCE_CUDA=1: no nvcc"), done.stderr
    assert sorted(p.name for p in tree.iterdir()) == ["workflow"]  # no .venv, no profile link
    # the control: without FORCE_CUDA the same copy goes on to the (failing) Python check
    env["FORCE_CUDA"] = "0"
    done = _run(["bash", str(tree / "workflow" / "scripts" / "install.sh")], env, cwd=tmp_path)
    assert done.returncode == 1 and "CPython 3.11 is required" in done.stderr


def _fake_python(tmp_path: Path, torch_cuda: str) -> Path:
    """Answers the build script's two torch questions; anything else (pip) fails loudly."""
    return _exe(tmp_path / "fakepy" / "python", f"""#!/bin/sh
case "$*" in
  *torch.version.cuda*) echo {torch_cuda} ;;
  *torch.__version__*) echo 2.13.0 ;;
  *) echo "fake python: unexpected call: $*" >&2; exit 3 ;;
esac
""")


def _build_env(tmp_path, nvcc_release="13.0", gpus=None, **extra):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    if gpus is not None:
        lines = "".join(f"echo '{cap}'\n" for cap in gpus)
        _exe(fake_bin / "nvidia-smi", f"#!/bin/sh\n{lines}")
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{_path_without('nvcc', 'nvidia-smi')}",
               CUDA_HOME=str(_fake_cuda_home(tmp_path, nvcc_release)),
               MMCV_SDIST=str(tmp_path / "not-fetched.tar.gz"))
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    env.update(extra)
    return env


def test_build_script_refuses_without_nvcc_before_torch_or_download(tmp_path):
    env = dict(os.environ, PATH=_path_without("nvcc"), CUDA_HOME=str(tmp_path / "no-cuda"))
    done = _run(["bash", str(BUILD), str(_fake_python(tmp_path, "13.0"))], env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("FORCE_CUDA=1: no nvcc") and "fake python" not in done.stderr


def test_build_script_refuses_a_cpu_torch(tmp_path):
    done = _run(["bash", str(BUILD), str(_fake_python(tmp_path, "none"))],
                _build_env(tmp_path, gpus=["9.0"]))
    assert done.returncode == 1
    assert "is a CPU-only build" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_build_script_refuses_a_cuda_major_mismatch(tmp_path):
    done = _run(["bash", str(BUILD), str(_fake_python(tmp_path, "13.0"))],
                _build_env(tmp_path, nvcc_release="12.4", gpus=["9.0"]))
    assert done.returncode == 1
    assert "nvcc is CUDA 12.4 but torch 2.13.0 was built with CUDA 13.0" in done.stderr


def test_build_script_takes_arch_list_from_the_gpus(tmp_path):
    """Two H100s and an A100: TORCH_CUDA_ARCH_LIST=8.0;9.0; then it goes for the sdist (here a
    missing MMCV_SDIST, so it stops there without a download)."""
    done = _run(["bash", str(BUILD), str(_fake_python(tmp_path, "13.0"))],
                _build_env(tmp_path, gpus=["9.0", "9.0", "8.0"]))
    assert done.returncode == 1
    assert "TORCH_CUDA_ARCH_LIST=8.0;9.0," in done.stdout, done.stdout + done.stderr
    assert "not-fetched.tar.gz does not exist" in done.stderr


def test_build_script_without_gpus_wants_an_arch_list(tmp_path):
    done = _run(["bash", str(BUILD), str(_fake_python(tmp_path, "13.0"))], _build_env(tmp_path))
    assert done.returncode == 1
    assert "TORCH_CUDA_ARCH_LIST is unset and nvidia-smi lists no GPU" in done.stderr
    env = _build_env(tmp_path, TORCH_CUDA_ARCH_LIST="8.6")
    done = _run(["bash", str(BUILD), str(_fake_python(tmp_path, "13.0"))], env)
    assert "TORCH_CUDA_ARCH_LIST=8.6," in done.stdout, done.stdout + done.stderr


# ---------------------------------------------------------------- the patch on the real sdist


@pytest.fixture(scope="module")
def patched_sdist(request) -> Path:
    """mmcv-2.1.0/ from the PyPI sdist with the patch applied by the build script's own
    --prepare step (download once, kept in .pytest_cache; skipped only when PyPI is not
    reachable)."""
    cache = Path(request.config.cache.mkdir("mmcv-2.1.0-sdist"))
    env = dict(os.environ)
    sdist = cache / "mmcv-2.1.0.tar.gz"
    if sdist.is_file():
        env["MMCV_SDIST"] = str(sdist)
    done = _run(["bash", str(BUILD), "--prepare", str(cache), sys.executable], env, timeout=600)
    if done.returncode != 0 and "could not download" in done.stderr:
        pytest.skip(f"PyPI not reachable for the mmcv 2.1.0 sdist: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_patch_applies_and_leaves_no_thc_include(patched_sdist):
    csrc = patched_sdist / "mmcv" / "ops" / "csrc"
    left = [str(p.relative_to(patched_sdist)) for p in csrc.rglob("*")
            if p.is_file() and THC_INCLUDE.search(p.read_text(errors="replace"))]
    assert left == []
    for name in PATCHED:
        assert "#include <ATen/cuda/Atomic.cuh>" in (patched_sdist / name).read_text()
    # applied exactly once: reversing it succeeds
    done = _run(["patch", "-p1", "-R", "--dry-run", "-i", str(PATCH)], None, cwd=patched_sdist)
    assert done.returncode == 0, done.stdout + done.stderr


INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def _closure(csrc: Path, sources: list[Path]) -> set[Path]:
    """Every file under csrc that ``sources`` can reach through #include, ignoring #if guards
    (an over-approximation: what the compiler reads is a subset) and trying every include
    folder the setup.py branches use."""
    dirs = [csrc / "common", csrc / "pytorch", csrc / "common" / "cuda", csrc]
    seen: set[Path] = set()
    todo = list(sources)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in INCLUDE.findall(f.read_text(errors="replace")):
            for d in (f.parent, *dirs):
                if (d / name).is_file():
                    todo.append((d / name).resolve())
    return seen


@pytest.mark.slow
def test_patch_touches_no_file_of_the_cpu_build(patched_sdist):
    """The CPU build (what `make setup` and CI compile) is the same with or without the patch:
    setup.py's CPU branch compiles pytorch/*.cpp and pytorch/cpu/*.cpp, and none of them can
    reach a patched file; the CUDA sources do (the resolver's own check)."""
    setup = (patched_sdist / "setup.py").read_text()
    cpu_branch = setup.split("Compiling {ext_name} only with CPU')", 1)[1].split("extension =")[0]
    assert "glob.glob('./mmcv/ops/csrc/pytorch/*.cpp')" in cpu_branch
    assert "glob.glob('./mmcv/ops/csrc/pytorch/cpu/*.cpp')" in cpu_branch
    assert cpu_branch.count("glob.glob(") == 2
    csrc = (patched_sdist / "mmcv" / "ops" / "csrc").resolve()
    cpu = [*sorted((csrc / "pytorch").glob("*.cpp")),
           *sorted((csrc / "pytorch" / "cpu").glob("*.cpp"))]
    assert len(cpu) > 50
    patched = {(patched_sdist / name).resolve() for name in PATCHED}
    assert _closure(csrc, cpu) & patched == set()
    cuda = sorted((csrc / "pytorch" / "cuda").glob("*.cu"))
    assert _closure(csrc, [csrc / "pytorch" / "cuda" / "nms_cuda.cu"]) >= {
        (csrc / "common" / "pytorch_cuda_helper.hpp").resolve()}
    assert patched <= _closure(csrc, cuda)
