"""The reproducible install: requirements.lock covers what pyproject.toml asks for, this environment was
installed from it, and both serving images install the same pinned versions (Postgres driver included)."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, like the lock
REPO = Path(__file__).resolve().parents[1]


def _lock_script():
    spec = importlib.util.spec_from_file_location("dapt_lock_script", REPO / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK_SCRIPT = _lock_script()
LOCK = LOCK_SCRIPT.read_pins(REPO / "requirements.lock")  # the pins whose marker holds here
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _project_requirements() -> list[Requirement]:
    lines = list(PYPROJECT["dependencies"])
    for extra in ("test", "dev"):
        lines += PYPROJECT["optional-dependencies"][extra]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def test_the_lock_pins_every_requirement_of_pyproject_within_its_range():
    missing, outside = [], []
    for requirement in _project_requirements():
        name = canonicalize_name(requirement.name)
        if name not in LOCK:
            missing.append(str(requirement))
        elif not requirement.specifier.contains(Version(LOCK[name]), prereleases=True):
            outside.append(f"{requirement} (lock: {LOCK[name]})")
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    assert not outside, f"pyproject.toml and requirements.lock disagree (run `make lock`): {outside}"
    assert "pip" in LOCK  # `make setup` upgrades pip to the locked one


def test_this_environment_was_installed_from_the_lock():
    """`make setup` installs with -c requirements.lock: what runs the tests is what the lock says."""
    if not LOCK:
        pytest.skip("the lock's pins are for another Python or platform (see its markers)")
    differ = {}
    for name, version in LOCK.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ[name] = (version, None)
            continue
        if Version(installed).public != Version(version).public:
            differ[name] = (version, installed)
    assert not differ, f"installed versions differ from requirements.lock (lock, installed): {differ}"


def test_typer_is_pinned_to_the_release_whose_bundled_click_main_handles():
    typer = next(r for r in _project_requirements() if r.name == "typer")
    assert str(typer.specifier) == f"=={LOCK['typer']}"
    from typer._click.exceptions import ClickException  # noqa: F401 - what dapt.cli.main() catches


def test_the_postgres_driver_is_a_runtime_dependency():
    runtime = {
        canonicalize_name(Requirement(line).name): Requirement(line) for line in PYPROJECT["dependencies"]
    }
    assert "binary" in runtime["psycopg"].extras
    assert not any(Requirement(line).name == "psycopg" for line in PYPROJECT["optional-dependencies"]["test"])


def test_both_bentofiles_install_the_locked_serving_packages_with_the_postgres_driver_and_s3fs():
    images = {"bentofile.yaml": "gpu", "bentofile.cpu.yaml": "cpu"}
    for bentofile, image in images.items():
        python = yaml.safe_load((REPO / bentofile).read_text(encoding="utf-8"))["python"]
        requirements_path = REPO / python["requirements_txt"]
        assert requirements_path == LOCK_SCRIPT.BENTO_REQUIREMENTS[image], bentofile
        assert "packages" not in python  # BentoML ignores `packages` next to requirements_txt
        pins = LOCK_SCRIPT.read_pins(requirements_path)
        for name in (
            *("psycopg", "psycopg-binary", "sqlalchemy", "tokenizers", "numpy", "pydantic", "bentoml"),
            *("s3fs", "fsspec", "aiobotocore", "botocore"),  # DAPT_ARTIFACT_ROOT=s3://... in the image
        ):
            assert pins.get(name) == LOCK[name], (bentofile, name, pins.get(name), LOCK[name])
        runtime = {k: v for k, v in pins.items() if k.startswith("onnxruntime")}
        others = {k: v for k, v in pins.items() if not k.startswith("onnxruntime")}
        assert {k: v for k, v in others.items() if LOCK.get(k) != v} == {}, (
            bentofile
        )  # every pin from the lock
        if image == "gpu":  # the CUDA 12 + cuDNN 9 build, matching the base image
            assert list(runtime) == ["onnxruntime-gpu"]
            assert Version(runtime["onnxruntime-gpu"]) < Version("1.27"), runtime
        else:  # the CPU build at the version the tests ran (onnxruntime-gpu's module is the same)
            assert runtime == {"onnxruntime": LOCK["onnxruntime-gpu"]}
        assert not {"torch", "transformers", "optimum"} & set(pins)  # no training stack in the image


def test_the_lock_script_reproduces_the_committed_files_from_this_environment(tmp_path, monkeypatch):
    """What `make lock` would write from this (lock-installed) environment is what is committed."""
    monkeypatch.setattr(LOCK_SCRIPT, "LOCK", tmp_path / "requirements.lock")
    targets = {image: tmp_path / path.name for image, path in LOCK_SCRIPT.BENTO_REQUIREMENTS.items()}
    monkeypatch.setattr(LOCK_SCRIPT, "BENTO_REQUIREMENTS", targets)
    LOCK_SCRIPT.main()
    assert LOCK_SCRIPT.read_pins(tmp_path / "requirements.lock") == LOCK
    for image, path in targets.items():
        committed = _lock_script().BENTO_REQUIREMENTS[image]
        assert LOCK_SCRIPT.read_pins(path) == LOCK_SCRIPT.read_pins(committed), image
