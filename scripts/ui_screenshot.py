"""Regenerate the README's screenshot of `dapt ui` (docs/registry-ui.png) with headless Chromium.

    python scripts/ui_screenshot.py                       # tiny BERT, sample data, two `dapt run`s (minutes)
    python scripts/ui_screenshot.py --home .dapt          # an existing registry, e.g. the one `make demo` made
    python scripts/ui_screenshot.py --recipe recipes/demo.yaml --runs 1   # the demo recipe (MiniLM; slower)

Registries are built by the installed `dapt` console script (`dapt run`, real training on data/sample/) in a
temporary DAPT_HOME; then `dapt ui` serves it on 127.0.0.1 and Chromium (scripts/ensure-chromium.sh installs it)
takes a 1280×900 screenshot of a page (default: the newest version of the first model).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DAPT = Path(sys.executable).with_name("dapt")


def _env(home: Path) -> dict[str, str]:
    from models.settings import stack_environment

    env = os.environ | stack_environment(home)
    for key in ("DAPT_REGISTRY_URL", "DAPT_ARTIFACT_ROOT", "PREFECT_API_URL"):
        env.pop(key, None)  # this home's registry only
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def build_registry(home: Path, recipe: Path | None, runs: int) -> None:
    if recipe is None:
        from models.tiny import save_tiny_bert
        from tests.tiny_recipe import write_tiny_recipe

        base = save_tiny_bert(home / "tiny_bert")
        recipe = write_tiny_recipe(home / "recipe", REPO / "data" / "sample", base, name="finsent")
    for run in range(1, runs + 1):
        print(f"[screenshot] dapt run {recipe} ({run}/{runs})", flush=True)
        code = subprocess.run([str(DAPT), "run", str(recipe)], cwd=REPO, env=_env(home)).returncode
        if code not in (0, 3):  # 3: registered, the gate kept it out of production: still a version to show
            raise SystemExit(f"dapt run failed with exit code {code}")


def default_page(home: Path) -> str:
    os.environ.update(_env(home))
    from models.registry.store import Registry

    versions = Registry().list_versions()
    if not versions:
        raise SystemExit(f"the registry under {home} is empty: run `dapt run RECIPE` first, or drop --home")
    name = sorted({v.name for v in versions})[0]
    newest = max(v.version for v in versions if v.name == name)
    return f"/models/{name}/{newest}"


def screenshot(home: Path, page: str, out: Path) -> None:
    from tests.services.test_ui import _free_port, stop, wait_up
    from tests.services.test_ui_browser import Browser, find_chromium

    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium found: run scripts/ensure-chromium.sh (or set DAPT_CHROMIUM)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(DAPT), "ui", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    profile = Path(tempfile.mkdtemp(prefix="dapt-screenshot-"))
    try:
        wait_up(url + "/", server, timeout_s=300)  # a busy machine can take long to import the UI
        browser = Browser(binary, profile)
        try:
            browser.open(url + page)
            clip = {"x": 0, "y": 0, "width": 1280, "height": 900, "scale": 1}  # the top of the page
            shot = browser.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.close()
    finally:
        stop(server)
        shutil.rmtree(profile, ignore_errors=True)
    print(f"[screenshot] {url}{page} -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home", type=Path, help="an existing DAPT_HOME whose registry to show (nothing is run)"
    )
    parser.add_argument(
        "--recipe", type=Path, help="recipe to run into a fresh registry (default: tiny BERT)"
    )
    parser.add_argument(
        "--runs", type=int, default=2, help="how many `dapt run`s (versions) to make (default 2)"
    )
    parser.add_argument("--page", help="page to show (default: the newest version of the first model)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "registry-ui.png")
    args = parser.parse_args()
    if not DAPT.is_file():
        raise SystemExit(f"{DAPT} is missing: install the package first (make setup)")
    if args.home is not None:
        home = args.home.expanduser().resolve()
        screenshot(home, args.page or default_page(home), args.out.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="dapt-screenshot-home-") as folder:
        home = Path(folder)
        build_registry(home, args.recipe.resolve() if args.recipe else None, args.runs)
        screenshot(home, args.page or default_page(home), args.out.resolve())


if __name__ == "__main__":
    main()
