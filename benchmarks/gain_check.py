"""How each adaptation-gain check reads one adapted encoder against the base, on the recipe's own training data.

    .venv/bin/python benchmarks/gain_check.py RECIPE --encoder ADAPTED            # short_finetune and probe
    .venv/bin/python benchmarks/gain_check.py RECIPE --encoder ADAPTED --checks short_finetune,probe,finetune

``ADAPTED`` is an adapted encoder folder (``dapt adapt --out`` writes ``<out>/encoder``; a run keeps one in
``DAPT_HOME/adapt/<key>/encoder``). Each check runs ``measure_adaptation_gain`` as the flow does (the validation
split of train, the recipe's settings, ``adapt.gain_check`` set to the check) and reports its gain, standard error,
verdict and seconds. Compare the gains with what whole fine-tunes bought on the eval set
(``benchmarks/quality.py --runs adapted,none``): the check that agrees with them is the one to trust
(benchmarks/README.md, "Session 21 figures"). Prints one JSON object; ``probe`` (the old default) is the baseline
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BenchmarkError, load_average, machine_info, say  # noqa: E402
from models.recipe import AdaptConfig  # noqa: E402

CHECKS = get_args(AdaptConfig.model_fields["gain_check"].annotation)  # the checks a recipe may name


def parse_checks(text: str) -> list[str]:
    checks = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [check for check in checks if check not in CHECKS]
    if not checks or unknown:
        raise BenchmarkError(f"--checks {text!r}: give a comma-separated list of {', '.join(CHECKS)}")
    return checks


def measure(recipe_path: Path, encoder: Path, checks: list[str]) -> dict:
    from models.data import load_task_data
    from models.evaluation.adaptation_gain import measure_adaptation_gain
    from models.recipe import RecipeError, load_usable_recipe
    from models.stages import StageInputError, model_folder

    try:
        recipe = load_usable_recipe(recipe_path)
        adapted = model_folder(encoder, "encoder")
    except (RecipeError, StageInputError) as error:
        raise BenchmarkError(str(error)) from error
    base = Path(recipe.resolved_base_model())
    train = load_task_data(recipe).train
    report: dict = {
        "benchmark": "gain-check",
        "recipe": str(recipe_path),
        "base": str(base),
        "adapted": str(adapted),
        "train_rows": len(train),
        "machine": machine_info(),
        "checks": {},
    }
    for check in checks:
        say(f"{check}: base against adapted on {len(train)} training rows")
        checked = recipe.model_copy(update={"adapt": recipe.adapt.model_copy(update={"gain_check": check})})
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"gain-{check}-") as work:
            result = measure_adaptation_gain(checked, base, adapted, train, Path(work), progress=say)
        report["checks"][check] = result.to_dict() | {"wall_seconds": round(time.perf_counter() - started, 1)}
    report["load_average_end"] = load_average()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "recipe", type=Path, help="the recipe whose training data and settings the checks use"
    )
    parser.add_argument("--encoder", type=Path, required=True, help="the adapted encoder folder")
    parser.add_argument(
        "--checks", default="short_finetune,probe", help=f"comma-separated: {', '.join(CHECKS)}"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        report = measure(args.recipe, args.encoder, parse_checks(args.checks))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
