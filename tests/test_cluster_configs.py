"""Static checks of the cluster/ configs: no Ray cluster is started and no image is built.

Covers the container images' definition (cluster/Dockerfile, parsed here because the build machine has no
Docker) and the two constraints files it installs with, the Ray cluster launcher config for AWS (also validated
with Ray's own autoscaler schema and config preparation, i.e. what `ray up` checks before it calls AWS), the
KubeRay RayJob, the Kubernetes CronJob and the crontab line. cluster/local.sh is tested in tests/test_local_sh.py.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER = REPO_ROOT / "cluster"
AWS_YAML = CLUSTER / "aws-gpu.yaml"
RAYJOB_YAML = CLUSTER / "kuberay-rayjob.yaml"
CRONJOB_YAML = CLUSTER / "cron" / "k8s-cronjob.yaml"
CRONTAB = CLUSTER / "cron" / "skinray-nightly.cron"
NIGHTLY_SH = CLUSTER / "nightly.sh"
JOB_OUTCOME = CLUSTER / "job-outcome.sh"
LOCAL_SH = CLUSTER / "local.sh"
DOCKERFILE = CLUSTER / "Dockerfile"
CONSTRAINTS = CLUSTER / "constraints.txt"
CONSTRAINTS_GPU = CLUSTER / "constraints-gpu.txt"
PYPROJECT = REPO_ROOT / "pyproject.toml"

JOB_PATH_RE = re.compile(r"(?<![\w/.-])jobs/[\w./-]+\.py\b")
RAY_IMAGE_RE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d+)(?P<gpu>-gpu)?$")
# What installs packages when a node or a job starts (a runtime env's pip/uv/conda is checked separately).
RUNTIME_INSTALL_RE = re.compile(r"\b(pip3?|uv|conda|mamba|apt-get|apt)\b[^;&|]*\binstall\b|\btensorflow\b", re.IGNORECASE)
ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}


def _load(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def _cluster_text_files() -> list[Path]:
    files = [p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    return sorted(files)


def _pins(path: Path) -> dict[str, str]:
    """name==version lines of a constraints file, by canonical name."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([\w.!+-]+)", line)
        assert m, f"{path.name}: not a name==version pin: {raw!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = m.group(3)
    assert pins, path
    return pins


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


# --------------------------------------------------------------------------- #
# cluster/Dockerfile, parsed (no Docker on the build machine)
# --------------------------------------------------------------------------- #


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]

    @property
    def workdir(self) -> str:
        wd = "/"
        for a in self.args("WORKDIR"):
            wd = posixpath.normpath(posixpath.join(wd, a.strip()))
        return wd


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped, as Docker does."""
    out: list[tuple[str, str]] = []
    buf: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comment lines are dropped even inside a continuation
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].rstrip())
            continue
        buf.append(stripped)
        line = " ".join(buf)
        buf = []
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def _parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for instr, rest in _dockerfile_instructions(text):
        if instr == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            assert len(words) in (1, 3), rest
            name = None
            if len(words) == 3:
                assert words[1].lower() == "as", rest
                name = words[2].lower()
            stages.append(Stage(name=name, base=words[0]))
        elif instr == "ARG" and not stages:
            continue  # global ARGs before the first FROM
        else:
            assert stages, f"{instr} before the first FROM"
            stages[-1].instructions.append((instr, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    parsed = _parse_dockerfile(DOCKERFILE.read_text())
    named = {s.name: s for s in parsed if s.name}
    assert len(named) == len([s for s in parsed if s.name]), "duplicate stage names"
    return named


def _copy_args(arg: str) -> tuple[dict[str, str], list[str], str]:
    words = shlex.split(arg)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    assert len(words) >= 2, arg
    return flags, words[:-1], words[-1]


def _stage_files(stage_name: str, stages: dict[str, Stage]) -> dict[str, Path]:
    """The files a stage's COPY instructions put in the image: image path -> repository file.

    Follows Docker's rules for what this project uses: a directory source copies its contents into the
    destination, several sources (or a glob) need a destination ending in '/', --from copies from another stage.
    """
    stage = stages[stage_name]
    files: dict[str, Path] = {}
    if stage.base in stages:
        files.update(_stage_files(stage.base, stages))
    wd = "/"
    for instr, arg in stage.instructions:
        if instr == "WORKDIR":
            wd = posixpath.normpath(posixpath.join(wd, arg))
        if instr not in ("COPY", "ADD"):
            continue
        flags, srcs, dest = _copy_args(arg)
        dest_abs = posixpath.normpath(posixpath.join(wd, dest))
        if "from" in flags:
            assert flags["from"] in stages, f"COPY --from={flags['from']}: no such stage"
            source = {p: f for p, f in _stage_files(flags["from"], stages).items()}
            for src in srcs:
                src = posixpath.normpath(src)
                matched = False
                for path, f in source.items():
                    if path == src or path.startswith(src + "/"):
                        rel = posixpath.relpath(path, src) if path != src else posixpath.basename(path)
                        files[posixpath.normpath(posixpath.join(dest_abs, rel))] = f
                        matched = True
                assert matched, f"COPY --from={flags['from']} {src}: nothing there"
            continue
        if len(srcs) > 1 or any(ch in "".join(srcs) for ch in "*?["):
            assert dest.endswith("/"), f"COPY of several files needs a destination ending in '/': {arg}"
        for src in srcs:
            matches = sorted(p for p in REPO_ROOT.glob(src.rstrip("/")) if ".git" not in p.parts)
            assert matches, f"COPY source {src!r} matches nothing in the repository (build context = repo root)"
            for m in matches:
                if m.is_dir():
                    for f in m.rglob("*"):
                        if f.is_file() and "__pycache__" not in f.parts:
                            files[posixpath.join(dest_abs, f.relative_to(m).as_posix())] = f
                else:
                    target = posixpath.join(dest_abs, m.name) if dest.endswith("/") else dest_abs
                    files[posixpath.normpath(target)] = m
    return files


def _built_images() -> dict[str, str]:
    """target -> image name, from the documented `docker build ... --target T -t IMAGE .` commands."""
    images = {}
    for m in re.finditer(r"^#\s*docker build -f cluster/Dockerfile --target (\S+) -t (\S+) \.\s*$",
                         DOCKERFILE.read_text(), re.MULTILINE):
        images[m.group(1)] = m.group(2)
    return images


def _shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a shell-form RUN (split at ; && || | and newlines, quotes respected)."""
    lex = shlex.shlex(run, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    cmds, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set(";&|()"):
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        cmds.append(cur)
    return cmds


def _pip_installs(stage: Stage) -> list[list[str]]:
    """argv (from `install` on) of each `pip install` / `python -m pip install` in the stage's RUN instructions."""
    out = []
    for run in stage.args("RUN"):
        for words in _shell_commands(run):
            for i in range(len(words) - 1):
                # `pip install`, `/path/pip3 install` and `python -m pip install`
                if posixpath.basename(words[i]) in ("pip", "pip3") and words[i + 1] == "install":
                    out.append(words[i + 1 :])
    return out


def _constraint_files(argv: list[str]) -> list[str]:
    files = []
    for i, w in enumerate(argv):
        if w in ("-c", "--constraint") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif w.startswith("--constraint="):
            files.append(w.split("=", 1)[1])
    return files


def test_dockerfile_parser_sees_continuations_and_comments():
    text = "FROM a AS x\n# c\nRUN one \\\n  # inside\n  two\nFROM x AS y\nWORKDIR /w\nWORKDIR sub\n"
    parsed = _parse_dockerfile(text)
    assert [(s.name, s.base) for s in parsed] == [("x", "a"), ("y", "x")]
    assert parsed[0].args("RUN") == ["one two"]
    assert parsed[1].workdir == "/w/sub"
    with pytest.raises(AssertionError):
        _parse_dockerfile("RUN x\n")
    assert _shell_commands('a -c "x; y" && b || c; d') == [["a", "-c", "x; y"], ["b"], ["c"], ["d"]]
    st = Stage(name="t", base="b", instructions=[("RUN", 'pip install --no-cache-dir -c c.txt ".[cpu]" && rm -rf x'),
                                                  ("RUN", "python -m pip install -c d.txt y")])
    assert _pip_installs(st) == [["install", "--no-cache-dir", "-c", "c.txt", ".[cpu]"],
                                 ["install", "-c", "d.txt", "y"]]


def test_dockerfile_targets_and_base_images(stages):
    assert {"cpu", "gpu"} <= set(stages)
    expected_py = None
    for line in CONSTRAINTS.read_text().splitlines()[:5]:
        if m := re.search(r"Python (\d)\.(\d+)", line):
            expected_py = m.group(1) + m.group(2)
    assert expected_py, "constraints.txt's header names the Python it was resolved on"
    for target, gpu in (("cpu", False), ("gpu", True)):
        m = RAY_IMAGE_RE.match(stages[target].base)
        assert m, f"target {target}: FROM {stages[target].base} is not a rayproject/ray image"
        assert bool(m.group("gpu")) == gpu, f"target {target}: FROM {stages[target].base}"
        assert m.group("py") == expected_py, f"{stages[target].base}: constraints are for Python {expected_py}"
    # every other stage is built from scratch, a known image or an earlier stage
    for name, st in stages.items():
        assert st.base == "scratch" or st.base in stages or RAY_IMAGE_RE.match(st.base), (name, st.base)


def test_dockerfile_ray_version_matches_pins_and_installed_ray(stages):
    tags = {RAY_IMAGE_RE.match(stages[t].base).group("ray") for t in ("cpu", "gpu")}
    assert len(tags) == 1, f"cpu and gpu images use different rays: {tags}"
    (tag,) = tags
    assert _pins(CONSTRAINTS)["ray"] == tag, "FROM rayproject/ray tag vs ray== in constraints.txt"
    assert _pins(CONSTRAINTS_GPU)["ray"] == tag, "FROM rayproject/ray tag vs ray== in constraints-gpu.txt"
    assert ray.__version__ == tag, f"images use ray {tag}, this venv has {ray.__version__}"
    assert str(_load(RAYJOB_YAML)["spec"]["rayClusterSpec"]["rayVersion"]) == tag


@pytest.mark.parametrize("target,constraints,extra", [("cpu", "cluster/constraints.txt", "train"),
                                                      ("gpu", "cluster/constraints-gpu.txt", "train,gpu")])
def test_dockerfile_installs_pinned_skinray(stages, target, constraints, extra):
    stage = stages[target]
    installs = _pip_installs(stage)
    assert installs, f"target {target} installs nothing"
    files = _stage_files(target, stages)
    wd = stage.workdir
    for argv in installs:
        cfiles = _constraint_files(argv)
        assert cfiles, f"target {target}: pip install without -c: {argv}"
        for c in cfiles:
            in_image = posixpath.normpath(posixpath.join(wd, c))
            assert in_image in files, f"target {target}: -c {c} is not copied into the image ({in_image})"
            assert files[in_image].is_file()
    (skinray,) = [a for argv in installs for a in argv if re.fullmatch(r"\.(\[[\w,]+\])?", a)]
    assert skinray == f".[{extra}]", f"target {target} installs {skinray}"
    assert constraints in [c for argv in installs for c in _constraint_files(argv)]
    # the project is copied to WORKDIR, and `python jobs/score.py` works from there
    for rel in ("pyproject.toml", "README.md", "LICENSE", "skinray/__init__.py", "jobs/score.py", "jobs/train.py"):
        assert posixpath.join(wd, rel) in files, f"target {target}: {rel} not in {wd}"


def test_dockerfile_env(stages):
    for target in ("cpu", "gpu"):
        env = " ".join(stages[target].args("ENV"))
        assert "PYTHONUNBUFFERED=1" in env, target
        assert "TF_CPP_MIN_LOG_LEVEL=" in env, target
        assert stages[target].workdir != "/", target


def test_dockerfile_run_commands_are_valid_sh(stages):
    runs = [r for st in stages.values() for r in st.args("RUN")]
    assert runs
    for run in runs:
        assert not run.startswith("["), f"exec-form RUN: {run}"
        subprocess.run(["sh", "-n", "-c", run], check=True)


def _fake_pip_env(tmp_path: Path, installed: set[str]) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    pip = bindir / "pip"
    # `pip show NAME...` succeeds only if every NAME is "installed"
    pip.write_text('#!/bin/sh\n[ "$1" = show ] || exit 2\nshift\nfor n in "$@"; do\n'
                   '  case " $FAKE_INSTALLED " in *" $n "*) ;; *) exit 1 ;; esac\ndone\n')
    pip.chmod(0o755)
    return {"PATH": f"{bindir}:/usr/bin:/bin", "FAKE_INSTALLED": " ".join(sorted(installed))}


@pytest.mark.parametrize("target,ok", [("cpu", {"onnxruntime"}), ("gpu", {"onnxruntime-gpu"})])
def test_dockerfile_exactly_one_onnxruntime_build(stages, tmp_path, target, ok):
    """Run the stage's `pip show` check with a fake pip: only the target's own ONNX Runtime build may pass."""
    (check,) = [r for r in stages[target].args("RUN") if "pip show" in r]
    for installed in ({"onnxruntime"}, {"onnxruntime-gpu"}, ORT_BUILDS, set()):
        env = _fake_pip_env(tmp_path, installed)
        r = subprocess.run(["sh", "-c", check], env=env, capture_output=True, text=True, timeout=30, check=False)
        assert (r.returncode == 0) == (installed == ok), (target, sorted(installed), r.returncode, r.stderr)
    imports = [r for r in stages[target].args("RUN") if re.search(r"python -c .*import onnxruntime", r)]
    assert imports, f"target {target}: no RUN step imports onnxruntime"
    if target == "gpu":
        assert any("CUDAExecutionProvider" in r for r in imports), "the GPU image must check the CUDA provider"


FAKE_PIP = """\
import json, os, re, sys, tomllib
ORT = {"onnxruntime", "onnxruntime-gpu"}
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(" ".join(args) + "\\n")
if args[:2] == ["-m", "venv"]:  # `python -m venv .venv`: .venv/bin/python is this fake again
    os.makedirs(os.path.join(args[2], "bin"), exist_ok=True)
    os.symlink(os.path.abspath(sys.argv[0]), os.path.join(args[2], "bin", "python"))
    sys.exit(0)
if args[:2] == ["-m", "pip"]:
    args = args[2:]
path = os.environ["FAKE_STATE"]
state = set(json.load(open(path))) if os.path.exists(path) else set()
project = tomllib.load(open(os.environ["FAKE_PYPROJECT"], "rb"))["project"]
def builds(reqs):
    return {re.match(r"[\\w.-]+", r).group(0) for r in reqs} & ORT
if args[0] == "install":  # the project (with its extras) brings the ORT builds pyproject names; a build by name
    for a in args[1:]:
        m = re.fullmatch(r"\\.(?:\\[([\\w,]*)\\])?", a)
        if m:
            extras = [e for e in (m.group(1) or "").split(",") if e]
            state |= builds(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]])
        elif a in ORT:
            state.add(a)
elif args[0] == "uninstall":
    state -= set(args[1:])
elif args[0] == "show":
    sys.exit(0 if set(args[1:]) <= state else 1)
json.dump(sorted(state), open(path, "w"))
"""


def _fake_pip(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A `pip` (and `python -m pip` / `python -m venv`) that tracks which ONNX Runtime builds are installed."""
    import sys

    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    fake = bindir / "pip"
    fake.write_text(f"#!{sys.executable}\n" + FAKE_PIP)
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "FAKE_STATE": str(tmp_path / "state.json"),
           "FAKE_LOG": str(tmp_path / "log.txt"), "FAKE_PYPROJECT": str(PYPROJECT)}
    return fake, env


def _installed(env: dict[str, str]) -> set[str]:
    return set(json.loads(Path(env["FAKE_STATE"]).read_text()))


@pytest.mark.parametrize("target,ort", [("cpu", {"onnxruntime"}), ("gpu", {"onnxruntime-gpu"})])
def test_dockerfile_install_ends_with_exactly_the_targets_onnxruntime_build(stages, tmp_path, target, ort):
    """The stage's install steps, run against pyproject's dependencies with a fake pip: the base install brings
    onnxruntime, so the gpu target must swap it for onnxruntime-gpu, and its own `pip show` check must then pass."""
    _fake, env = _fake_pip(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    runs = stages[target].args("RUN")
    for run in [r for r in runs if re.search(r"\bpip (un)?install\b", r)]:
        subprocess.run(["sh", "-c", run], env=env, cwd=work, check=True, timeout=60)
    assert _installed(env) == ort
    (check,) = [r for r in runs if "pip show" in r]
    subprocess.run(["sh", "-c", check], env=env, cwd=work, check=True, timeout=60)


def _bootstrap(tmp_path: Path, *args: str) -> tuple[dict[str, str], list[str]]:
    """cluster/bootstrap.sh run in a copy of the repository's install files, with a fake python and pip."""
    repo = tmp_path / "repo"
    (repo / "cluster").mkdir(parents=True)
    for rel in ("pyproject.toml", "cluster/bootstrap.sh", "cluster/constraints.txt", "cluster/constraints-gpu.txt"):
        (repo / rel).write_text((REPO_ROOT / rel).read_text())
    fake, env = _fake_pip(tmp_path)
    r = subprocess.run(["bash", str(repo / "cluster" / "bootstrap.sh"), *args], env={**env, "PYTHON": str(fake)},
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return env, Path(env["FAKE_LOG"]).read_text().splitlines()


def test_bootstrap_default_installs_train_and_test_on_the_cpu_build(tmp_path):
    env, log = _bootstrap(tmp_path)
    assert "-m pip install --quiet -c cluster/constraints.txt -e .[train,test]" in log
    assert _installed(env) == {"onnxruntime"}


def test_bootstrap_base_install_has_no_extras(tmp_path):
    env, log = _bootstrap(tmp_path, "")
    assert "-m pip install --quiet -c cluster/constraints.txt -e ." in log
    assert _installed(env) == {"onnxruntime"}


def test_bootstrap_gpu_swaps_in_the_gpu_build_of_onnxruntime(tmp_path):
    env, log = _bootstrap(tmp_path, "gpu")
    assert "-m pip install --quiet -c cluster/constraints-gpu.txt -e .[train,gpu]" in log
    assert _installed(env) == {"onnxruntime-gpu"}, log


def test_bootstrap_sh_is_valid_bash():
    subprocess.run(["bash", "-n", str(CLUSTER / "bootstrap.sh")], check=True)


# --------------------------------------------------------------------------- #
# Constraints files
# --------------------------------------------------------------------------- #


def test_constraints_files_pin_installed_ray():
    for path in (CONSTRAINTS, CONSTRAINTS_GPU):
        assert path.is_file(), f"{path.name} is installed with -c by cluster/Dockerfile"
        assert _pins(path)["ray"] == ray.__version__, f"{path.name} pins ray=={_pins(path)['ray']}"


def test_constraints_gpu_matches_cpu_pins():
    cpu, gpu = _pins(CONSTRAINTS), _pins(CONSTRAINTS_GPU)
    # constraints-gpu.txt pins onnxruntime too: the base install brings it before the GPU install swaps it out
    assert "onnxruntime-gpu" in gpu and gpu.get("onnxruntime") == cpu["onnxruntime"]
    assert "onnxruntime-gpu" not in cpu
    for name in ("tensorflow", "keras", "ray", "numpy", "pyarrow", "pandas", "deltalake", "onnx", "tf2onnx",
                 "protobuf", "boto3", "pillow", "scikit-learn"):
        assert name in cpu and name in gpu, name
    differ = {n: (cpu[n], gpu[n]) for n in cpu.keys() & gpu.keys() if cpu[n] != gpu[n]}
    assert not differ, f"constraints.txt vs constraints-gpu.txt pin different versions: {differ}"


def test_constraints_files_name_the_same_packages():
    """Apart from the ONNX Runtime build and the CUDA wheels, both files pin the same set (catches one going stale)."""
    cpu, gpu = set(_pins(CONSTRAINTS)), set(_pins(CONSTRAINTS_GPU))
    gpu_only = {n for n in gpu - cpu if n != "onnxruntime-gpu" and not n.startswith("nvidia-")}
    cpu_only = cpu - gpu - {"onnxruntime"}
    assert not cpu_only, f"pinned in constraints.txt only: {sorted(cpu_only)}"
    assert not gpu_only, f"pinned in constraints-gpu.txt only (missing from constraints.txt): {sorted(gpu_only)}"


def test_constraints_gpu_has_tensorflows_cuda_wheels():
    gpu = _pins(CONSTRAINTS_GPU)
    try:
        reqs = [Requirement(r) for r in metadata.requires("tensorflow") or []]
    except metadata.PackageNotFoundError:
        pytest.skip("tensorflow not installed")
    cuda = [r for r in reqs if r.marker and r.marker.evaluate({"extra": "and-cuda"})
            and not r.marker.evaluate({"extra": ""})]
    assert cuda, "tensorflow has no and-cuda extra?"
    for r in cuda:
        name = canonicalize_name(r.name)
        assert name in gpu, f"tensorflow[and-cuda] needs {r}, not pinned in constraints-gpu.txt"
        assert r.specifier.contains(gpu[name], prereleases=True), f"{name}=={gpu[name]} vs {r}"


def test_constraints_gpu_onnxruntime_matches_tensorflows_cuda():
    """onnxruntime-gpu on PyPI is a CUDA 12 build up to 1.26 and a CUDA 13 build from 1.27 on (its CUDA provider
    links libcudart.so.13); TensorFlow's [and-cuda] wheels are CUDA 12 (nvidia-*-cu12). Mixing them leaves ONNX
    Runtime without its CUDA libraries, and it falls back to the CPU."""
    gpu = _pins(CONSTRAINTS_GPU)
    tf_cuda = {n for n in gpu if n.startswith("nvidia-cuda-runtime")}
    assert tf_cuda == {"nvidia-cuda-runtime-cu12"}, tf_cuda
    assert Version(gpu["onnxruntime-gpu"]) < Version("1.27"), (
        f"onnxruntime-gpu=={gpu['onnxruntime-gpu']} is a CUDA 13 build; the CUDA wheels here are CUDA 12")


@pytest.mark.parametrize("extras,path", [("train,test", CONSTRAINTS), ("train,gpu,test", CONSTRAINTS_GPU)])
def test_constraints_satisfy_pyproject(extras, path):
    """`pip install -c <constraints> ".[extras]"` can only resolve if every pin satisfies pyproject's ranges."""
    project = _pyproject()["project"]
    pins = _pins(path)
    reqs = [Requirement(r) for r in project["dependencies"]
            + [r for extra in extras.split(",") for r in project["optional-dependencies"][extra]]]
    bad = []
    for r in reqs:
        name = canonicalize_name(r.name)
        if name not in pins:
            bad.append(f"{r} is not pinned")
        elif not r.specifier.contains(pins[name], prereleases=True):
            bad.append(f"{name}=={pins[name]} does not satisfy {r}")
    assert not bad, f"{path.name} vs pyproject.toml [{extras}]: {bad}"


# --------------------------------------------------------------------------- #
# Images referenced by the cluster configs
# --------------------------------------------------------------------------- #


def test_dockerfile_documents_build_commands(stages):
    images = _built_images()
    assert set(images) == {"cpu", "gpu"}, images
    version = _pyproject()["project"]["version"]
    for target, image in images.items():
        assert target in stages
        repo, _, tag = image.rpartition(":")
        assert repo.endswith("/skinray") and tag == f"{version}-{target}", image
    assert len({i.rpartition(":")[0] for i in images.values()}) == 1, "both targets go to one repository"


def _image_target(image: str) -> str:
    inverse = {v: k for k, v in _built_images().items()}
    assert image in inverse, f"{image} is not an image built from cluster/Dockerfile ({sorted(inverse)})"
    return inverse[image]


# --------------------------------------------------------------------------- #
# Shared checks
# --------------------------------------------------------------------------- #


def test_no_aws_credentials_in_cluster_files():
    pattern = re.compile(r"AKIA[0-9A-Z]{12,}|ASIA[0-9A-Z]{12,}|aws_secret_access_key|aws_access_key_id|aws_session_token", re.I)
    for path in _cluster_text_files():
        text = path.read_text(errors="replace")
        assert "AKIA" not in text, path
        assert not pattern.search(text), f"credential-like string in {path}"


def test_every_jobs_entrypoint_mentioned_exists():
    mentioned: dict[str, set[str]] = {}
    for path in _cluster_text_files():
        for m in JOB_PATH_RE.findall(path.read_text(errors="replace")):
            mentioned.setdefault(m, set()).add(str(path.relative_to(REPO_ROOT)))
    assert "jobs/score.py" in mentioned
    missing = {p: sorted(where) for p, where in mentioned.items() if not (REPO_ROOT / p).is_file()}
    assert not missing, f"entrypoints named in cluster/ but missing in the repo: {missing}"


def _aws_commands(cfg) -> list[str]:
    cmds = []
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        cmds += cfg.get(key) or []
    for nt in cfg["available_node_types"].values():
        cmds += nt.get("initialization_commands") or []
        cmds += nt.get("worker_setup_commands") or []
    return cmds


def test_runtime_install_pattern():
    for cmd in ("pip install -c c.txt skinray", "bash -c 'python -m pip install x'", "uv pip install y",
                "sudo apt-get install -y z", "python -c 'import tensorflow'"):
        assert RUNTIME_INSTALL_RE.search(cmd), cmd
    for cmd in ("ray status", "ulimit -n 65536; ray start --head --port=6379", "pip show onnxruntime"):
        assert not RUNTIME_INSTALL_RE.search(cmd), cmd


def test_no_config_installs_at_run_time():
    """Dependencies (TensorFlow above all) come from the images: nothing is installed when a node or job starts."""
    try:
        from ray.autoscaler._private.util import prepare_config
    except ImportError:  # private API moved: check the file as written
        prepare_config = dict

    offenders = []
    # AWS, after merging Ray's defaults (which pip-install Ray and boto3 unless the config overrides them)
    for cmd in _aws_commands(prepare_config(_load(AWS_YAML))):
        if RUNTIME_INSTALL_RE.search(cmd):
            offenders.append(("aws-gpu.yaml", cmd))
    # KubeRay: runtime env and entrypoint
    spec = _load(RAYJOB_YAML)["spec"]
    env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    for key in ("pip", "uv", "conda"):
        if key in env:
            offenders.append(("kuberay-rayjob.yaml runtimeEnvYAML", key))
    if RUNTIME_INSTALL_RE.search(spec["entrypoint"]):
        offenders.append(("kuberay-rayjob.yaml entrypoint", spec["entrypoint"]))
    # the CronJob's launcher pod and the crontab line
    for doc in yaml.safe_load_all(CRONJOB_YAML.read_text()):
        if doc and doc.get("kind") == "CronJob":
            for c in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
                script = " ".join(c.get("command", []) + c.get("args", []))
                if RUNTIME_INSTALL_RE.search(script):
                    offenders.append(("k8s-cronjob.yaml", script))
    for entry in _crontab_entries():
        if RUNTIME_INSTALL_RE.search(entry) or "--runtime-env" in entry:
            offenders.append(("skinray-nightly.cron", entry))
    assert not offenders, offenders


# --------------------------------------------------------------------------- #
# AWS cluster launcher config
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def aws():
    return _load(AWS_YAML)


def _worker_types(cfg):
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def test_aws_top_level(aws):
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type"):
        assert key in aws, key
    assert aws["provider"]["type"] == "aws"
    assert aws["provider"]["region"] == "us-west-2"
    assert isinstance(aws["provider"].get("cache_stopped_nodes"), bool)
    assert aws["auth"]["ssh_user"]
    assert aws["head_node_type"] in aws["available_node_types"]


def test_aws_node_types(aws):
    types = aws["available_node_types"]
    for name, nt in types.items():
        assert isinstance(nt.get("node_config"), dict) and nt["node_config"].get("InstanceType"), name
        assert isinstance(nt.get("resources"), dict), name
        assert nt["node_config"].get("ImageId", "").startswith("ami-"), name
    workers = _worker_types(aws)
    assert workers
    for name, nt in workers.items():
        assert isinstance(nt.get("min_workers"), int) and isinstance(nt.get("max_workers"), int), name
        assert 0 <= nt["min_workers"] <= nt["max_workers"] <= aws["max_workers"], name
    assert aws["max_workers"] >= sum(nt["min_workers"] for nt in workers.values())

    gpu = [n for n, nt in workers.items() if nt["resources"].get("GPU", 0) >= 1]
    cpu = [n for n, nt in workers.items() if not nt["resources"].get("GPU") and nt["resources"].get("CPU", 0) >= 1]
    assert gpu, "a GPU worker group is needed for training and GPU scoring"
    assert cpu, "a CPU worker group is needed for decode"
    assert all(workers[n]["node_config"]["InstanceType"].startswith(("g", "p")) for n in gpu)
    # GPU nodes scale from 0 (the scoring job waits for them: inference.gpu_wait_seconds)
    assert all(workers[n]["min_workers"] == 0 for n in gpu)


def test_aws_instance_profiles(aws):
    # S3 through instance profiles: every node type, including the workers
    # (Ray only adds a default profile to the head).
    for name, nt in aws["available_node_types"].items():
        prof = nt["node_config"].get("IamInstanceProfile")
        assert isinstance(prof, dict) and (prof.get("Arn") or prof.get("Name")), name
        if prof.get("Arn"):
            assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+", prof["Arn"]), name


def test_aws_commands(aws):
    head = " ; ".join(aws["head_start_ray_commands"])
    worker = " ; ".join(aws["worker_start_ray_commands"])
    assert aws["head_start_ray_commands"][0].strip() == "ray stop"
    assert aws["worker_start_ray_commands"][0].strip() == "ray stop"
    assert "ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=0.0.0.0" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    # Setup is baked into the images: the setup lists are present (else Ray's defaults apply) and empty,
    # and no node type brings its own.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert key in aws and aws[key] == [], key
    for name, nt in aws["available_node_types"].items():
        assert not nt.get("worker_setup_commands"), name
    # no repository sync to the nodes any more: nothing references files synced to ~/skinray
    assert not aws.get("file_mounts")
    assert not any("~/skinray" in c for c in _aws_commands(aws))


def _effective_docker(cfg, node_type: str) -> tuple[str, list[str]]:
    """(image, run options) of a node type's container, merged the way Ray's autoscaler/updater does."""
    docker = dict(cfg.get("docker") or {})
    docker.update(cfg["available_node_types"][node_type].get("docker") or {})
    head = node_type == cfg["head_node_type"]
    image = docker.get("head_image" if head else "worker_image", docker.get("image"))
    opts = list(docker.get("run_options") or []) + list(docker.get("head_run_options" if head else
                                                                   "worker_run_options") or [])
    return image, opts


def test_aws_runs_the_dockerfile_images(aws):
    docker = aws.get("docker")
    assert docker, "aws-gpu.yaml must run the nodes in the skinray images (docker: section)"
    assert docker.get("container_name")
    assert isinstance(docker.get("pull_before_run"), bool)
    assert not any("--gpus" in o for o in (docker.get("run_options") or []) + (docker.get("head_run_options") or [])
                   + (docker.get("worker_run_options") or [])), "--gpus only on GPU node types"
    for name, nt in aws["available_node_types"].items():
        image, opts = _effective_docker(aws, name)
        assert image, name
        target = _image_target(image)
        has_gpu = nt["resources"].get("GPU", 0) >= 1
        assert target == ("gpu" if has_gpu else "cpu"), f"{name} (GPU={has_gpu}) runs the {target} image"
        gpus_opt = any(re.search(r"--gpus[ =]all\b", o) for o in opts)
        assert gpus_opt == has_gpu, f"{name}: run options {opts}"


def test_aws_config_against_ray_schema(aws):
    import jsonschema

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} not shipped with this ray")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(aws, schema)
    # the schema really checks the per-node-type docker section (only a few keys are allowed there)
    bad = json.loads(json.dumps(aws))
    name = next(n for n, nt in bad["available_node_types"].items() if nt.get("docker"))
    bad["available_node_types"][name]["docker"]["run_options"] = ["--gpus all"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_aws_config_passes_ray_up_preparation(aws):
    # What `ray up` does before contacting AWS: merge with the provider's
    # defaults.yaml, then validate (schema, docker section, head type, min/max workers).
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # private API moved
        pytest.skip("ray.autoscaler._private.util not available")
    prepared = prepare_config(yaml.safe_load(AWS_YAML.read_text()))
    validate_config(prepared)
    assert prepared["head_setup_commands"] == [] and prepared["worker_setup_commands"] == []
    # The defaults' head_setup_commands install boto3 for the autoscaler; here the head's image must have it.
    assert _image_target(_effective_docker(prepared, prepared["head_node_type"])[0]) == "cpu"
    deps = [canonicalize_name(Requirement(r).name) for r in _pyproject()["project"]["dependencies"]]
    assert "boto3" in deps and "boto3" in _pins(CONSTRAINTS)


# --------------------------------------------------------------------------- #
# KubeRay RayJob
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def rayjob():
    return _load(RAYJOB_YAML)


def test_rayjob_basics(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] == "K8sJobMode"
    entry = spec["entrypoint"]
    assert re.match(r"^python (jobs/[\w/]+\.py)\b", entry)
    assert (REPO_ROOT / JOB_PATH_RE.search(entry).group(0)).is_file()
    for flag in ("--model", "--input-root", "--out", "--date"):
        assert f"{flag} " in entry, flag


def _render_rayjob(date: str, attempt: int) -> dict:
    """The template as the launcher renders it (the same two substitutions as its sed)."""
    return yaml.safe_load(RAYJOB_YAML.read_text().replace("__SCORE_DATE__", date).replace("__ATTEMPT__", str(attempt)))


def test_rayjob_placeholders_render_a_valid_name_per_attempt(rayjob):
    assert "--date __SCORE_DATE__" in rayjob["spec"]["entrypoint"]
    names = set()
    for attempt in (1, 2, 10):
        rendered = _render_rayjob("2025-01-31", attempt)
        name = rendered["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        assert "2025-01-31" in name and name.endswith(f"-{attempt}")
        assert rendered["metadata"]["labels"]["skinray.io/score-date"] == "2025-01-31"
        assert "--date 2025-01-31" in rendered["spec"]["entrypoint"]
        assert "__" not in yaml.safe_dump(rendered)
        names.add(name)
    assert len(names) == 3, "every attempt of a night is a RayJob of its own"


def test_rayjob_retries_on_a_fresh_cluster(rayjob):
    """KubeRay >= 1.2: spec.backoffLimit re-runs a failed RayJob on a new RayCluster (0, the default: never)."""
    limit = rayjob["spec"].get("backoffLimit")
    assert isinstance(limit, int) and limit > 0, limit
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True  # each retry's cluster goes away too


def test_rayjob_runtime_env(rayjob):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert isinstance(env, dict)
    assert set(env) <= {"working_dir", "env_vars", "py_modules", "config"}, set(env)
    RuntimeEnv(**env)  # Ray's own validation (fields, URI types)
    if "working_dir" in env:
        assert env["working_dir"].endswith(".zip")
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())
    assert "AWS_REGION" in env["env_vars"]


def _containers(rcs):
    head = rcs["headGroupSpec"]["template"]["spec"]
    yield "head", head, head["containers"]
    for g in rcs["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"], g["template"]["spec"]["containers"]


def _gpus(container) -> int:
    return int(container["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_rayjob_cluster_spec(rayjob):
    rcs = rayjob["spec"]["rayClusterSpec"]
    assert str(rcs["rayVersion"]) == ray.__version__
    head = rcs["headGroupSpec"]["template"]["spec"]
    (head_c,) = head["containers"]
    assert any(p["containerPort"] == 8265 for p in head_c["ports"])
    assert head_c["resources"]["limits"]
    assert head.get("serviceAccountName")

    groups = rcs["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        spec = g["template"]["spec"]
        assert spec.get("serviceAccountName") == head["serviceAccountName"]
        assert len(spec["containers"]) == 1, g["groupName"]
    gpu_groups = [g for g in groups if _gpus(g["template"]["spec"]["containers"][0]) >= 1]
    assert gpu_groups
    for g in gpu_groups:
        spec = g["template"]["spec"]
        assert spec.get("nodeSelector") or spec.get("affinity")
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))

    # the scoring pool can't outgrow the GPU pods
    entry = rayjob["spec"]["entrypoint"]
    m = re.search(r"--(?:max-)?actors[ =](\d+)", entry)
    if "--gpu" in entry.split() and m:
        assert int(m.group(1)) <= sum(g["maxReplicas"] for g in gpu_groups), entry
        if "--actors" in entry and not rcs.get("enableInTreeAutoscaling"):
            assert int(m.group(1)) <= sum(g["replicas"] for g in gpu_groups), entry


def test_rayjob_runs_the_dockerfile_images(rayjob, stages):
    rcs = rayjob["spec"]["rayClusterSpec"]
    for group, _spec, containers in _containers(rcs):
        (c,) = containers
        target = _image_target(c["image"])
        assert target == ("gpu" if _gpus(c) else "cpu"), f"{group}: {c['image']}"
        # `python jobs/...` runs on the head from the image's WORKDIR
        wd = c.get("workingDir", stages[target].workdir)
        assert wd == stages[target].workdir, f"{group}: workingDir {wd} vs the image's {stages[target].workdir}"
        rel = JOB_PATH_RE.search(rayjob["spec"]["entrypoint"]).group(0)
        assert posixpath.join(wd, rel) in _stage_files(target, stages), f"{group}: {rel} not in the image at {wd}"
# --------------------------------------------------------------------------- #
# Schedules
# --------------------------------------------------------------------------- #

_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}


def _valid_cron_field(field: str, idx: int) -> bool:
    lo, hi = _CRON_RANGES[idx]
    names = _MONTHS if idx == 3 else _DAYS if idx == 4 else {}
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2:
            return False
        values = []
        for b in bounds:
            b = b.lower()
            if b in names:
                values.append(names[b])
            elif b.isdigit() and lo <= int(b) <= hi:
                values.append(int(b))
            else:
                return False
        if len(values) == 2 and values[0] > values[1]:
            return False
    return True


def _valid_schedule(fields: list[str]) -> bool:
    return len(fields) == 5 and all(_valid_cron_field(f, i) for i, f in enumerate(fields))


@pytest.mark.parametrize(
    "expr,ok",
    [("0 2 * * *", True), ("*/15 0-6 1,15 jan-jun mon-fri", True), ("60 2 * * *", False), ("0 2 * *", False), ("0 2 * * 8", False)],
)
def test_cron_validator(expr, ok):
    assert _valid_schedule(expr.split()) is ok


def test_k8s_cronjob():
    docs = [d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d]
    (cj,) = [d for d in docs if d.get("kind") == "CronJob"]
    assert cj["apiVersion"] == "batch/v1"
    spec = cj["spec"]
    assert _valid_schedule(spec["schedule"].split()), spec["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (c,) = pod["containers"]
    script = "\n".join(c.get("args", []) + c.get("command", [])[2:])
    assert "__SCORE_DATE__" in script and "__ATTEMPT__" in script and "kubectl create" in script
    subprocess.run(["sh", "-n", "-c", c["args"][0]], check=True)

    # the template it renders, and the outcome reader, are mounted from one ConfigMap
    mounted = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] in mounted]
    assert {e["name"]: e["value"] for e in c["env"]}["TEMPLATE_DIR"] == mount["mountPath"]
    for name in (RAYJOB_YAML.name, JOB_OUTCOME.name):
        assert f"$TEMPLATE_DIR/{name}" in script, name
        assert re.search(rf"--from-file={re.escape(name)}=cluster/\S*{re.escape(name)}", CRONJOB_YAML.read_text()), name
    assert mounted[mount["name"]]["configMap"]["name"]

    # the launcher's own verdicts (2, 3, 75) end the Kubernetes Job; other pod failures run it once more
    job = spec["jobTemplate"]["spec"]
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == c["name"]
    assert rule["onExitCodes"]["operator"] == "In" and sorted(rule["onExitCodes"]["values"]) == [2, 3, 75]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert job["activeDeadlineSeconds"] < 24 * 3600, "all attempts of a night end before the next night starts"

    # RBAC: its ServiceAccount may create RayJobs
    sa = pod["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and any(s["name"] == sa for s in d["subjects"])]
    assert bindings
    rules = roles[bindings[0]["roleRef"]["name"]]["rules"]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)


def _crontab_entries():
    entries = []
    for line in CRONTAB.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", s):
            continue
        entries.append(s)
    return entries


def test_crontab_line():
    entries = _crontab_entries()
    assert len(entries) == 1, entries
    parts = entries[0].split(None, 5)
    assert len(parts) == 6
    assert _valid_schedule(parts[:5]), parts[:5]
    command = parts[5]
    # through cluster/nightly.sh (`ray job submit`, retried on 75), with the date computed once for every attempt
    assert re.search(r"\bbash cluster/nightly\.sh \"skinray-score-\$D\" .*-- python jobs/score\.py ", command), command
    assert 'D="$(date -u +\\%F)"' in command and '--date "$D"' in command
    assert "--log-format json" in command  # the error's kind reaches the log (and job-outcome.sh's fallback)
    # an unescaped % would end the command at that point
    assert not re.search(r"(?<!\\)%", command), "escape % as \\% in crontab"
    subprocess.run(["sh", "-n", "-c", command.replace("\\%", "%")], check=True)


# --------------------------------------------------------------------------- #
# Retries: what the nightly launchers do with each exit code
# (0 done, 2 usage, 3 data: final; 75 temporary: retried; skinray/__init__.py)
# --------------------------------------------------------------------------- #

RAY_FAILED = ("Job '{id}' failed\n-----\nStatus message: Job entrypoint command failed with exit code {code}, last "
              "available logs (truncated to 20,000 chars):\n{log}\n")


@pytest.mark.parametrize("text,code", [
    (RAY_FAILED.format(id="x", code=75, log='{"kind": "temporary"}'), 75),
    (RAY_FAILED.format(id="x", code=3, log='{"kind": "temporary"}'), 3),  # the exit code wins over the log
    (RAY_FAILED.format(id="x", code=2, log=""), 2),
    ("Job entrypoint command failed with exit code -9. No logs available.", 137),  # killed by SIGKILL (OOM)
    ('{"time": "t", "kind": "data", "message": "x \\"kind\\": \\"temporary\\""}', 3),  # no code: the JSON line's kind
    ('{"kind": "usage", "message": "bad flag"}', 2),
    ("Job submission has failed. Reason: BackoffLimitExceeded.", 75),  # nothing ran to its end
    ("", 75),
])
def test_job_outcome_reads_the_entrypoints_exit_code(text, code):
    r = subprocess.run(["sh", str(JOB_OUTCOME)], input=text, capture_output=True, text=True, timeout=30, check=True)
    assert r.stdout.strip() == str(code)


def test_retry_scripts_are_valid_shell():
    subprocess.run(["bash", "-n", str(NIGHTLY_SH)], check=True)
    subprocess.run(["sh", "-n", str(JOB_OUTCOME)], check=True)


def _fake_bin(tmp_path: Path, name: str, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    path = bindir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return bindir


# `sleep` that only records how long it was asked to wait
FAKE_SLEEP = """import os, sys
open(os.environ["FAKE_SLEEPS"], "a").write(sys.argv[1] + "\\n")
"""

# `ray job submit|status` that plays scripted outcomes: an exit code, "unreachable" or "stopped"
FAKE_RAY = """import json, os, sys
state_path = os.environ["FAKE_STATE"]
state = json.load(open(state_path))
args = sys.argv[1:]
assert args[:1] == ["job"], args
FAILED = ("Job '{id}' failed\\nStatus message: Job entrypoint command failed with exit code {code}, last available "
          "logs (truncated to 20,000 chars):\\n{{\\"kind\\": \\"temporary\\"}}")
if args[1] == "submit":
    sid = args[args.index("--submission-id") + 1]
    outcome = state["outcomes"].pop(0)
    state["submitted"].append({"id": sid, "argv": args[2:]})
    state["jobs"][sid] = outcome
    json.dump(state, open(state_path, "w"))
    if outcome == "unreachable":
        print("ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:8265.")
        sys.exit(1)
    if outcome == "stopped":
        print(f"Job '{sid}' was stopped")
        sys.exit(0)
    if outcome == 0:
        print(f"Job '{sid}' succeeded")
        sys.exit(0)
    print(FAILED.format(id=sid, code=outcome))
    sys.exit(1)
if args[1] == "status":
    outcome = state["jobs"].get(args[2])
    if outcome in (None, "unreachable"):
        print("ConnectionError: Failed to connect to Ray")
        sys.exit(1)
    print(FAILED.format(id=args[2], code=outcome) if outcome not in (0, "stopped") else "ok")
    sys.exit(0)
sys.exit(2)
"""


def _nightly(tmp_path: Path, outcomes: list) -> tuple[int, list[dict], list[int]]:
    """cluster/nightly.sh against a fake `ray`: (its exit code, the submissions, the waits between them)."""
    bindir = _fake_bin(tmp_path, "ray", FAKE_RAY)
    _fake_bin(tmp_path, "sleep", FAKE_SLEEP)
    state, sleeps = tmp_path / "state.json", tmp_path / "sleeps.txt"
    state.write_text(json.dumps({"outcomes": outcomes, "submitted": [], "jobs": {}}))
    sleeps.write_text("")
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "RAY_BIN": str(bindir / "ray"), "FAKE_STATE": str(state),
           "FAKE_SLEEPS": str(sleeps), "RAY_ADDRESS": "http://127.0.0.1:8265"}
    r = subprocess.run(["bash", str(NIGHTLY_SH), "skinray-score-2026-11-25", "--working-dir", ".", "--",
                        "python", "jobs/score.py", "--date", "2026-11-25"], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    return r.returncode, json.loads(state.read_text())["submitted"], [int(x) for x in sleeps.read_text().split()]


def test_nightly_retries_a_temporary_failure_until_it_succeeds(tmp_path):
    rc, submitted, sleeps = _nightly(tmp_path, [75, 75, 0])
    assert rc == 0
    ids = [s["id"] for s in submitted]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(i.startswith("skinray-score-2026-11-25-a") for i in ids)
    assert all(s["argv"][s["argv"].index("--") + 1:] == ["python", "jobs/score.py", "--date", "2026-11-25"]
               and "--working-dir" in s["argv"] for s in submitted), "every attempt runs the same command"
    assert sleeps == [300, 600]  # backoff, doubling


@pytest.mark.parametrize("code", [2, 3, 1])
def test_nightly_does_not_retry_a_final_failure(tmp_path, code):
    rc, submitted, sleeps = _nightly(tmp_path, [code, 0])
    assert (rc, len(submitted), sleeps) == (code, 1, [])


def test_nightly_retries_an_unreachable_cluster_and_gives_up_with_75(tmp_path):
    rc, submitted, sleeps = _nightly(tmp_path, ["unreachable", 75, 75, 0])
    assert (rc, len(submitted), sleeps) == (75, 3, [300, 600])


def test_nightly_does_not_retry_a_job_stopped_by_hand(tmp_path):
    rc, submitted, _ = _nightly(tmp_path, ["stopped", 0])
    assert (rc, len(submitted)) == (1, 1)


# `kubectl get rayjob NAME [-o jsonpath={.status.X}]` and `kubectl create -f -` over scripted RayJob outcomes: each
# RayJob reports a non-terminal deployment status once (KubeRay's own Retrying), then its outcome.
FAKE_KUBECTL = """import json, os, re, sys
import yaml
state_path = os.environ["FAKE_STATE"]
state = json.load(open(state_path))
args = sys.argv[1:]
def save():
    json.dump(state, open(state_path, "w"))
if args[:2] == ["create", "-f"]:
    manifest = yaml.safe_load(sys.stdin.read())
    name = manifest["metadata"]["name"]
    assert name not in state["jobs"], f"{name} exists"
    state["created"].append(manifest)
    state["jobs"][name] = {"status": state["outcomes"].pop(0), "polled": 0}
    save()
    print(f"rayjob.ray.io/{name} created")
    sys.exit(0)
assert args[:2] == ["get", "rayjob"], args
job = state["jobs"].get(args[2])
if job is None:
    print(f'Error from server (NotFound): rayjobs.ray.io "{args[2]}" not found', file=sys.stderr)
    sys.exit(1)
if len(args) > 3:
    field = re.fullmatch(r"jsonpath=\\{\\.status\\.(\\w+)\\}", args[4]).group(1)
    if field == "jobDeploymentStatus" and job["polled"] == 0:
        job["polled"] = 1
        save()
        print("Retrying", end="")
        sys.exit(0)
    print(job["status"].get(field, ""), end="")
sys.exit(0)
"""


def _rayjob_status(outcome) -> dict:
    if outcome == 0:
        return {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    if outcome == "submission":
        return {"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed",
                "message": "Job submission has failed. Reason: BackoffLimitExceeded. Message: ..."}
    if outcome == "deadline":
        return {"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded",
                "message": "The RayJob has passed the activeDeadlineSeconds."}
    if outcome == "invalid":
        return {"jobDeploymentStatus": "ValidationFailed", "message": "invalid spec"}
    return {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
            "message": RAY_FAILED.format(id="raysubmit_x", code=outcome, log='{"kind": "data"}')}


def _launcher(tmp_path: Path, outcomes: list, existing: list | None = None) -> tuple[int, list[dict], list[int]]:
    """The CronJob's launcher script against a fake `kubectl`: (exit code, RayJobs it created, its backoff waits)."""
    (cj,) = [d for d in yaml.safe_load_all(CRONJOB_YAML.read_text()) if d and d.get("kind") == "CronJob"]
    (c,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    template = tmp_path / "template"
    template.mkdir()
    for f in (RAYJOB_YAML, JOB_OUTCOME):
        (template / f.name).write_text(f.read_text())
    bindir = _fake_bin(tmp_path, "kubectl", FAKE_KUBECTL)
    _fake_bin(tmp_path, "sleep", FAKE_SLEEP)
    state, sleeps = tmp_path / "state.json", tmp_path / "sleeps.txt"
    jobs = {f"skinray-score-2026-11-25-{i + 1}": {"status": _rayjob_status(o), "polled": 1}
            for i, o in enumerate(existing or [])}
    state.write_text(json.dumps({"outcomes": [_rayjob_status(o) for o in outcomes], "created": [], "jobs": jobs}))
    sleeps.write_text("")
    env = {**{e["name"]: e["value"] for e in c["env"]}, "TEMPLATE_DIR": str(template), "SCORE_DATE": "2026-11-25",
           "PATH": f"{bindir}:/usr/bin:/bin", "FAKE_STATE": str(state), "FAKE_SLEEPS": str(sleeps)}
    r = subprocess.run([*c["command"], c["args"][0]], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    poll = int(env["POLL_SECONDS"])
    waits = [int(x) for x in sleeps.read_text().split() if int(x) != poll]
    return r.returncode, json.loads(state.read_text())["created"], waits


def test_launcher_retries_a_temporary_failure_with_a_fresh_rayjob(tmp_path):
    rc, created, waits = _launcher(tmp_path, [75, "submission", 0])
    assert rc == 0
    assert [m["metadata"]["name"] for m in created] == [f"skinray-score-2026-11-25-{i}" for i in (1, 2, 3)]
    assert all("--date 2026-11-25" in m["spec"]["entrypoint"] for m in created), "every attempt scores the same night"
    assert waits == [600, 1200]


@pytest.mark.parametrize("outcome,code", [(2, 2), (3, 3), (1, 1), ("deadline", 1), ("invalid", 2)])
def test_launcher_stops_on_a_final_outcome(tmp_path, outcome, code):
    rc, created, waits = _launcher(tmp_path, [outcome, 0])
    assert (rc, len(created), waits) == (code, 1, [])


def test_launcher_gives_up_with_75_after_its_attempts(tmp_path):
    rc, created, waits = _launcher(tmp_path, [75, 75, 75, 0])
    assert (rc, len(created), waits) == (75, 3, [600, 1200])


def test_launcher_rerun_reattaches_to_the_nights_attempts(tmp_path):
    """A second pod of the same night (the first was evicted) follows the attempts already made: no new RayJob
    while one exists, no wait before an attempt that already started."""
    rc, created, waits = _launcher(tmp_path, [0], existing=[75, 0])
    assert (rc, created, waits) == (0, [], [])
    (tmp_path / "second").mkdir()
    rc, created, waits = _launcher(tmp_path / "second", [0], existing=[75, 75])  # died during the backoff
    assert (rc, waits) == (0, [600]) and [m["metadata"]["name"] for m in created] == ["skinray-score-2026-11-25-3"]
