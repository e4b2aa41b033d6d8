"""The deploy install: `pip install linger` (numpy + onnx, no torch) validates, packs, checks and
runs an exported model from the command line in a fresh virtual environment.

The model is exported beforehand in this (full) environment; the fresh one gets linger and its
base dependencies only, at the versions installed here so pip reuses the wheels it already has.
Skipped only where a virtual environment cannot be created at all.
"""

import importlib.metadata
import os
import subprocess
import sys
import venv

import numpy as np
import pytest
import torch

import linger
from linger.validate import save_reference

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_base_dependencies_leave_torch_out():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    names = {d.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower()
             for d in project["dependencies"]}
    assert names >= {"numpy", "onnx"} and not names & {"torch", "matplotlib", "tqdm"}
    extras = project["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["train"])
    assert any(d.startswith("matplotlib") for d in extras["analysis"])
    assert "train" in " ".join(extras["test"]) and "analysis" in " ".join(extras["test"])


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    """A fresh venv with `pip install -e .` resolving the base dependencies only."""
    root = tmp_path_factory.mktemp("bare")
    try:
        venv.EnvBuilder(with_pip=True).create(root / "venv")
    except Exception as e:  # no ensurepip, read-only file system...
        pytest.skip(f"cannot create a virtual environment here ({type(e).__name__}: {e}); the"
                    f" torch-free install is not tested on this machine")
    bindir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("numpy", "onnx")]
    # the pins: the same versions as here, so pip takes the wheels it already has
    out = _run([str(bindir / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                "-q", "-e", REPO] + pins)
    assert out.returncode == 0, f"pip install -e . failed:\n{out.stdout}\n{out.stderr}"
    return bindir


def test_fresh_install_packs_checks_and_runs_without_torch(bare_env, tmp_path):
    python, cli = str(bare_env / "python"), str(bare_env / "linger")
    no_torch = _run([python, "-c", "import torch"])
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    torch.manual_seed(0)
    model = linger.init(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                            torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)))
    for _ in range(3):
        model(torch.randn(4, 1, 8, 8))
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    linger.onnx.export(model, x, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    save_reference(model, x, tmp_path / "ref")
    steps = {"help": [cli, "--help"],
             "validate": [cli, "validate", "ref.onnx", "ref.npz"],
             "check": [cli, "check", "m.onnx"],
             "pack": [cli, "pack", "m.onnx", "-o", "m.bin"],
             "run": [cli, "run", "m.bin", "x.npy", "-o", "y.npy"]}
    for name, cmd in steps.items():
        out = _run(cmd, cwd=tmp_path, env=env)
        assert out.returncode == 0, f"linger {name}:\n{out.stdout}\n{out.stderr}"
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected)  # bit-exact, without torch
    demo = _run([cli, "demo"], cwd=tmp_path, env=env)
    assert demo.returncode == 2 and "needs torch, which is not installed" in demo.stderr
