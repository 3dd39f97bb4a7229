"""What Prefect and Great Expectations cost on top of the work: one real `retrain` run, timed from inside.

Runs the flow on a recipe (default: the demo) in a fresh DAPT_HOME and prints JSON:
- wall_s: the whole run as a user sees it (Prefect's temporary server start included);
- stages_s: each task's own run time, read back from Prefect's API;
- prefect_overhead_s: wall time not spent inside any task (server start, orchestration, state tracking);
- gx_s: the validation task (Great Expectations import, suites, Data Docs);
- overhead_fraction: (prefect_overhead_s + gx_s) / wall_s. Target: <= 0.10.

Usage: python benchmarks/overhead.py [--recipe recipes/demo.yaml] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.yaml")
    parser.add_argument(
        "--home", type=Path, default=None, help="DAPT_HOME for the run (default: a new temp dir)"
    )
    args = parser.parse_args(argv)

    home = args.home or Path(tempfile.mkdtemp(prefix="dapt-overhead-"))
    os.environ["DAPT_HOME"] = str(home)
    sys.path.insert(0, str(REPO))
    from models.settings import configure_environment

    configure_environment()
    from models.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    started = time.perf_counter()
    from flows.retrain import retrain

    state = retrain(recipe, return_state=True)
    wall = time.perf_counter() - started
    if not state.is_completed():
        print(json.dumps({"error": f"the run did not complete: {state.message}"}))
        return 1

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    stages = {}
    for run in task_runs:
        name = run.name.rsplit("-", 1)[0]
        seconds = run.total_run_time.total_seconds() if run.total_run_time else 0.0
        stages[name] = round(stages.get(name, 0.0) + seconds, 3)
    in_tasks = sum(stages.values())
    gx = stages.get("validate-data", 0.0)
    prefect_overhead = max(wall - in_tasks, 0.0)
    result = {
        "recipe": str(args.recipe),
        "wall_s": round(wall, 2),
        "stages_s": stages,
        "work_s": round(in_tasks - gx, 2),
        "prefect_overhead_s": round(prefect_overhead, 2),
        "gx_s": round(gx, 2),
        "overhead_fraction": round((prefect_overhead + gx) / wall, 4),
        "target_fraction": 0.10,
        "baseline": "the same run's task time outside validation (the work itself), measured in this run",
        "load_average": os.getloadavg(),
    }
    out = home / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
