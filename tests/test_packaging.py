"""The distribution installs as one import package and lives beside the packages users have.

transformers 5 depends on Hugging Face's `kernels` distribution (import name `kernels`); our old
top-level `kernels/` shadowed it and broke diffusers' imports on a fresh install. These tests fail
if a top-level name of ours is claimed by another distribution, if importing ours beside theirs
breaks in one process, or if a non-editable wheel misses a module or the built-in model.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "sana-serve"


def _our_top_level_names() -> set[str]:
    return {name for name, dists in metadata.packages_distributions().items() if DIST in dists}


def test_our_only_top_level_import_name_is_sana_serve():
    assert _our_top_level_names() == {"sana_serve"}


def test_no_top_level_import_name_of_ours_is_provided_by_another_distribution():
    claims = metadata.packages_distributions()
    clashes = {name: sorted(set(claims[name]) - {DIST}) for name in _our_top_level_names()
               if set(claims[name]) - {DIST}}
    assert clashes == {}, f"top-level names shared with other distributions: {clashes}"


def test_nothing_at_the_repo_root_is_a_regular_package():
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")
    assert packages == ["sana_serve"]


def test_ours_imports_beside_transformers_diffusers_and_hf_kernels_from_the_repo_root():
    # `python -c` puts the working directory first on sys.path: the case that used to break.
    code = (
        "import sana_serve.engine, sana_serve.kernels.nvfp4, sana_serve.server.app, sana_serve.shapes.train\n"
        "import transformers, diffusers, kernels\n"
        "from kernels import CUDAProperties\n"  # what transformers/diffusers need from theirs
        "from diffusers import SanaVideoTransformer3DModel, AutoencoderKLWan\n"
        "from transformers import Gemma2Model\n"
        "from sana_serve.engine.model import SanaVideoTransformer\n"
        "import os; print(os.path.dirname(kernels.__file__)); print(os.path.dirname(sana_serve.__file__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs, ours = proc.stdout.split()
    assert Path(theirs).resolve() != (ROOT / "sana_serve" / "kernels").resolve()
    assert Path(ours).resolve() == (ROOT / "sana_serve").resolve()


def test_model_package_exports_the_transformer():
    from sana_serve.engine.model import SanaVideoTransformer
    from sana_serve.engine.model.transformer import SanaVideoTransformer as direct

    assert SanaVideoTransformer is direct


def test_dependencies_point_one_way():
    """cli -> server -> engine -> kernels; shapes -> engine. A module may import only downward."""
    allowed = {
        "kernels": {"kernels"},
        "engine": {"engine", "kernels"},
        "shapes": {"shapes", "engine", "kernels"},
        "server": {"server", "engine", "kernels"},
    }
    bad = []
    for room, may in allowed.items():
        for path in (ROOT / "sana_serve" / room).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                words = line.split()
                if len(words) >= 2 and words[0] in ("from", "import") and words[1].startswith("sana_serve."):
                    target = words[1].split(".")[1]
                    if target not in may:
                        bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bad == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = tmp.glob("sana_serve-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_venv(wheel, tmp_path_factory) -> Path:
    """A clean venv with our wheel (non-editable) installed and nothing of the checkout on its path.

    Its dependencies come from the test environment through a plain path entry (a .pth line, which
    adds the directory but runs none of its .pth hooks, so our editable finder stays out)."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def test_wheel_holds_every_module_and_the_built_in_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "sana_serve").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    expected |= {f"sana_serve/{p.relative_to(ROOT)}" for p in (ROOT / "configs").glob("*.yaml")}
    expected |= {f"sana_serve/{p.relative_to(ROOT)}" for p in (ROOT / "models" / "shapes-tiny").rglob("*")
                 if p.is_file() and p.suffix in (".json", ".md", ".safetensors")}
    assert sorted(expected - names) == []
    assert [n for n in names if "-train/" in n] == []  # training state stays in the checkout
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"sana_serve"}


def test_non_editable_install_generates_from_outside_the_checkout(wheel_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "v.npy"
    mp4 = tmp_path / "v.mp4"
    proc = subprocess.run([str(wheel_venv / "bin" / "sana-serve"), "generate", "--prompt",
                           "a red circle moving right on a black background", "--seconds", "2", "--seed", "0",
                           "--out", str(mp4), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOM" not in proc.stderr  # the wheel carried the trained model
    check = ("import sana_serve, sana_serve.engine, diffusers, kernels, sys\n"
             "from kernels import CUDAProperties\n"
             "from sana_serve.engine.video import decode_video\n"
             "from sana_serve.shapes import check_video, parse_prompt\n"
             f"frames = decode_video({str(mp4)!r})\n"
             "print(sana_serve.__file__); print(kernels.__file__); print(frames.shape)\n"
             "r = check_video(frames, parse_prompt('a red circle moving right on a black background'))\n"
             "print(r.passed)\n")
    proc = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs, shape, passed = proc.stdout.split("\n")[:4]
    assert Path(ours).is_relative_to(wheel_venv) and not Path(ours).is_relative_to(ROOT)
    assert "sana_serve" not in theirs
    assert shape == "(32, 64, 64, 3)"
    assert passed == "True"
