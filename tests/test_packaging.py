"""Packaging: the base install scores with ONNX Runtime and never needs TensorFlow; the `train` extra brings
TensorFlow for what needs it, and a command that needs it and lacks it says which extra to install.

TensorFlow is installed in the test venv, so "not installed" is simulated: a ``sitecustomize.py`` on PYTHONPATH
puts an import blocker first on ``sys.meta_path`` in every process that starts with that environment — the CLI
and the Ray workers it starts, which inherit PYTHONPATH.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from skinray import EXIT_USAGE, SkinrayError
from skinray.runtime import EXPORT_MODULES, TRAIN_EXTRA_INSTALL, installed, require_train_extra

from conftest import REPO, run_cli

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TRAIN_ONLY = {"tensorflow", "keras", "tf2onnx", "onnx"}
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the verbatim text
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
# dependencies skinray needs without an import statement of its own, and why
USED_WITHOUT_IMPORT = {"tf2onnx": "Keras' model.export(format='onnx') imports it (skinray.model.network.export_onnx)"}
NOT_INSTALLED_HERE = {"onnxruntime-gpu": {"onnxruntime"}}  # the GPU build of the same module
BLOCKED = ("tensorflow", "keras", "tf2onnx", "tensorboard", "tf_keras")
BLOCKER = f'''
import sys


class _NoTensorFlow:
    """Import blocker for the packaging tests: TensorFlow and its family are "not installed"."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the packaging test)", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


def _requirements(*extras: str) -> list[Requirement]:
    project = PROJECT["project"]
    reqs = project["dependencies"] if not extras else [r for e in extras for r in project["optional-dependencies"][e]]
    return [Requirement(r) for r in reqs]


def _names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def test_base_install_scores_without_tensorflow():
    base = _names(_requirements())
    assert "onnxruntime" in base
    assert not base & TRAIN_ONLY, f"the base install pulls in {sorted(base & TRAIN_ONLY)}"
    assert "tqdm" not in base


def test_train_extra_brings_tensorflow_and_the_export_tools():
    assert _names(_requirements("train")) >= TRAIN_ONLY
    assert set(EXPORT_MODULES) <= TRAIN_ONLY  # what commands check for is what the extra installs
    gpu = _names(_requirements("gpu"))
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


def test_build_system_and_license():
    (setuptools,) = [Requirement(r) for r in PROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert "77.0" in setuptools.specifier and "76.99" not in setuptools.specifier, setuptools  # SPDX license string
    assert PROJECT["project"]["license"] == "Apache-2.0"
    for name in PROJECT["project"].get("license-files", ["LICENSE"]):
        assert (REPO / name).is_file(), name
    assert hashlib.sha256((REPO / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256


def _imported_modules() -> set[str]:
    """Top-level names of every absolute import in skinray/, module-level and inside functions."""
    found: set[str] = set()
    for path in (REPO / "skinray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


@functools.cache
def _modules_by_distribution() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            out.setdefault(canonicalize_name(dist), set()).add(module)
    return out


def _import_names(dist: str) -> set[str]:
    """The modules a distribution provides (from its installed files; the name itself where not installed)."""
    return _modules_by_distribution().get(dist) or NOT_INSTALLED_HERE.get(dist, {dist.replace("-", "_")})


def test_every_folder_of_the_package_is_installed():
    """The package list is written out (see pyproject.toml): a new room that is not on it would be missing from
    every installed copy, and an entry without a folder would fail the build."""
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "skinray").rglob("*")
               if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    assert set(PROJECT["tool"]["setuptools"]["packages"]) == folders


def test_every_declared_dependency_is_used():
    """A dependency nothing imports (tqdm was one) costs every install and every image for nothing."""
    imported = _imported_modules()
    unused = []
    for req in _requirements() + _requirements("train", "gpu"):
        name = canonicalize_name(req.name)
        if name in USED_WITHOUT_IMPORT:
            assert name in EXPORT_MODULES, f"{name}: {USED_WITHOUT_IMPORT[name]}, so export checks it is installed"
            continue
        if not _import_names(name) & imported:
            unused.append(f"{req} ({sorted(_import_names(name))})")
    assert not unused, f"declared but never imported in skinray/: {unused}"


def test_a_missing_module_of_the_train_extra_is_one_line_naming_the_extra():
    assert installed("json") and not installed("skinray_no_such_module")
    with pytest.raises(SkinrayError, match=re.escape(f"needs skinray_no_such_module, which is not installed: "
                                                     f"{TRAIN_EXTRA_INSTALL}")):
        require_train_extra("this test", ("json", "skinray_no_such_module"))


def test_doctor_on_a_scoring_node_without_tensorflow_passes_and_says_what_is_off(monkeypatch):
    from skinray import doctor

    monkeypatch.setattr(doctor, "installed", lambda module: module != "tensorflow")
    report = doctor.Report()
    doctor.check_tensorflow(report)
    (check,) = report.checks
    assert check.ok and "not installed" in check.detail and TRAIN_EXTRA_INSTALL in check.detail


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=REPO)


@pytest.fixture(scope="module")
def no_tf_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a base install: TensorFlow, Keras, tf2onnx and TensorBoard cannot be imported."""
    blocker = tmp_path_factory.mktemp("no-tensorflow")
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(filter(None, [str(blocker), str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "RAY_ADDRESS": ""}  # the CLI starts its own local Ray, whose workers inherit this
    probe = _python("import tensorflow", env)
    assert probe.returncode != 0 and "blocked by the packaging test" in probe.stderr, probe.stderr[-500:]
    return env


def _one_line_naming_the_extra(proc, what: str) -> None:
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{what} needs TensorFlow, which is not installed: pip install 'skinray[train]'" in lines[0], lines


@pytest.mark.parametrize("args,what", [
    (["train", "--prepared", "PREPARED", "--out", "MODEL"], "training"),
    (["export", "--model", "OLD", "--out", "NEW"], "export"),
    (["predict", "--model", "MODEL", "x.jpg", "--sheet", "s.png", "--explain"], "--explain (Grad-CAM)"),
])
def test_commands_that_need_tensorflow_name_the_train_extra(no_tf_env, tmp_path, args, what):
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    _one_line_naming_the_extra(run_cli(*args, env=no_tf_env, timeout=120), what)


@pytest.mark.slow
def test_scoring_a_folder_with_the_default_engine_never_imports_tensorflow(no_tf_env, sample, model_dir, tmp_path):
    """`skinray score` on a base install: every row scored on Ray (driver and workers without TensorFlow), the
    review page written without Grad-CAM and saying why; `--engine tf` there names the extra instead."""
    from skinray.query import scores_dataset

    folder = tmp_path / "incoming"
    folder.mkdir()
    corrupt = set(sample["summary"]["corrupt_ids"])
    good = sorted(p for p in os.listdir(f"{sample['local']}/images") if p[:-4] not in corrupt)[:12]
    for name in good:
        shutil.copy(f"{sample['local']}/images/{name}", folder / name)
    out = tmp_path / "scores"
    base = ["score", "--model", model_dir, "--input", str(folder), "--out", str(out), "--date", "2026-11-25"]
    proc = run_cli(*base, "--actors", "1", "--batch-size", "4", env=no_tf_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = scores_dataset(str(out)).to_table().to_pandas()
    assert len(rows) == len(good) and rows["error"].isna().all() and rows["prob_malignant"].notna().all()
    (page,) = out.glob("runs/*/report.html")
    assert "No saliency: TensorFlow is not installed here" in page.read_text()
    _one_line_naming_the_extra(run_cli(*base, "--engine", "tf", "--run-id", "tf", env=no_tf_env, timeout=120),
                               "--engine tf")
