"""The package as a user gets it: `python -m build` makes an sdist and a wheel (built from that sdist), the wheel
installs into a fresh venv, and every CLI runs there beside a user's own `training.py` and `pipeline/`.

The venv gets the dependencies from this environment's site-packages through a .pth line (no torch
reinstall) and the wheel with --no-deps; this environment's editable install stays inactive there (a
.pth line adds a path, it does not run that folder's .pth hooks), so the code that runs is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: source folder -> installed folder, e.g. pipeline -> geo_ssl/pipeline, pipeline/_geo_ssl -> geo_ssl
PACKAGE_DIRS = {
    src: pkg.replace(".", "/") for pkg, src in PYPROJECT["tool"]["setuptools"]["package-dir"].items()
}
#: The repository's top-level folders that hold them (pipeline/_geo_ssl lies inside pipeline/).
TOP_FOLDERS = sorted({src.split("/")[0] for src in PACKAGE_DIRS})
CLIS = sorted(PYPROJECT["project"]["scripts"])
USER_MODULE = 'raise ImportError("the user\'s own {name} was imported")\n'


def _shipped_sources() -> list[tuple[str, str]]:
    """(source path, path in the wheel) of every file under the package folders, caches and dot files aside."""
    out = []
    for src, dst in PACKAGE_DIRS.items():
        for path in sorted((REPO / src).rglob("*")):
            if max((s for s in PACKAGE_DIRS if path.is_relative_to(REPO / s)), key=len) != src:
                continue  # in a folder mapped to another package (pipeline/_geo_ssl is geo_ssl, not pipeline's)
            rel = path.relative_to(REPO / src)
            if path.is_dir() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            if path.suffix in (".pyc", ".pyo"):
                continue
            out.append((f"{src}/{rel.as_posix()}", f"{dst}/{rel.as_posix()}"))
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel of a copy of the source tree (so the build leaves nothing in the repository)."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *PYPROJECT["project"].get("license-files", [])):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for folder in TOP_FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    out = root / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    env["GEO_SSL_PROGRESS"] = "0"
    return env


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel, with this environment's site-packages as its dependency source."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=_env(venv),
    ).stdout.strip()  # fmt: skip
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "zz_geo_ssl_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", str(dists["wheel"])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


@pytest.fixture()
def user_dir(tmp_path) -> Path:
    """A user's working folder holding their own `training.py` and `pipeline/` package."""
    (tmp_path / "training.py").write_text(USER_MODULE.format(name="training.py"))
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text(USER_MODULE.format(name="pipeline/"))
    return tmp_path


def _run_all(commands: list[list[str]], venv: Path, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run commands side by side (several import torch) in `cwd` with the venv first on PATH."""
    procs = [
        subprocess.Popen(
            argv, cwd=cwd, env=_env(venv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in commands
    ]
    done = []
    for argv, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr[-2000:]}"
    return proc.stdout


def test_wheel_holds_only_the_geo_ssl_namespace_and_every_source_file(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    version = PYPROJECT["project"]["version"]
    info = f"geo_ssl-{version}.dist-info/"
    assert {n.split("/")[0] for n in names} == {"geo_ssl", info.rstrip("/")}
    for top in TOP_FOLDERS:
        assert not any(n.startswith(f"{top}/") for n in names), top
    assert "geo_ssl/__init__.py" in names and not any("_geo_ssl" in n for n in names)
    missing = [src for src, dst in _shipped_sources() if dst not in names]
    assert missing == [], "not in the wheel (add the subpackage to `packages` or the file to package-data)"
    assert "geo_ssl/schemas/SAMPLE_FORMAT.md" in names
    assert f"{info}licenses/LICENSE" in names
    metadata = zipfile.ZipFile(dists["wheel"]).read(f"{info}METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert not any(line.startswith("Requires-Dist: torch==") for line in metadata.splitlines())
    entry_points = zipfile.ZipFile(dists["wheel"]).read(f"{info}entry_points.txt").decode()
    assert all(f"{cli} = geo_ssl." in entry_points for cli in CLIS)
    with tarfile.open(dists["sdist"]) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"LICENSE", "pyproject.toml", "README.md", "schemas/SAMPLE_FORMAT.md"} <= members
    assert "Copyright (c) 2026 the geo-ssl authors" in (REPO / "LICENSE").read_text()


def test_installed_wheel_runs_every_cli_beside_user_modules(venv, dists, user_dir):
    version = PYPROJECT["project"]["version"]
    bin_dir, python = venv / "bin", str(venv / "bin" / "python")
    probe = (
        "import importlib.metadata as m, sys, geo_ssl as g; print(g.__file__); print(g.__version__); "
        "print('torch' in sys.modules); print(g.cluster.__module__); "
        "import geo_ssl.pipeline as p, geo_ssl.training.evaluation.export as e; "
        "print(p.__file__); print(e.__file__); print(m.version('geo-ssl'))"
    )
    commands = [[str(bin_dir / cli), flag] for cli in CLIS for flag in ("--help", "--version")]
    commands += [
        [python, "-c", probe],
        [python, "-c", "import training"],
        [python, "-c", "import pipeline"],
        [python, "-m", "geo_ssl.pipeline.cli", "--version"],  # -m puts the user's folder first on sys.path
    ]
    results = _run_all(commands, venv, user_dir)
    cli_runs, (where, user_training, user_pipeline, as_module) = results[:-4], results[-4:]
    for cli, (helped, versioned) in zip(CLIS, zip(cli_runs[::2], cli_runs[1::2], strict=True), strict=True):
        assert "usage:" in _ok(helped) and cli in helped.stdout
        assert _ok(versioned).strip() == f"{cli} {version}"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=_env(venv),
    ).stdout.strip()  # fmt: skip
    root_file, root_version, torch_loaded, lazy, *files = _ok(where).split()
    pipeline_file, export_file, installed_version = files
    assert root_file == f"{site}/geo_ssl/__init__.py" and root_version == version
    assert torch_loaded == "False" and lazy == "geo_ssl.pipeline.cluster"  # `import geo_ssl` stays cheap
    assert pipeline_file.startswith(site) and export_file.startswith(
        site
    )  # the wheel's files, not the repo's
    assert installed_version == version
    assert "the user's own training.py was imported" in user_training.stderr  # geo-ssl does not shadow them
    assert "the user's own pipeline/ was imported" in user_pipeline.stderr
    assert _ok(as_module).strip().endswith(version)


def test_installed_wheel_builds_and_validates_a_tiny_dataset(venv, user_dir):
    cli = str(venv / "bin" / "geo-build-dataset")
    (synth,) = _run_all(
        [[cli, "synth-fmow", "--out", "fmow", "--locations", "6", "--workers", "1"]], venv, user_dir
    )
    assert "6 locations in = 6 written" in _ok(synth)
    build_args = [
        "build",
        "--root",
        "fmow",
        "--out",
        "shards",
        "--k",
        "2",
        "--workers",
        "1",
        "--resize",
        "64",
    ]
    (build,) = _run_all([[cli, *build_args]], venv, user_dir)
    assert "write-shards: 6 locations in = 6 written + 0 rejected + 0 skipped [ok]" in _ok(build)
    (validate,) = _run_all([[cli, "validate", "shards", "--workers", "1"]], venv, user_dir)
    assert "6 samples" in _ok(validate) and "[ok]" in validate.stdout
    assert sorted(p.name for p in (user_dir / "shards").glob("*.tar")) == [
        "train-000000.tar",
        "val-000000.tar",
    ]
