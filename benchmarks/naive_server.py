"""The naive baseline server: a transformers pipeline in PyTorch fp32 behind FastAPI, one request at a time.

    .venv/bin/python benchmarks/naive_server.py --bundle .dapt/bench/bundle-minilm-sentiment --port 3001

It loads the ``pytorch/`` checkpoint of a serving bundle with ``transformers.pipeline("text-classification")``
and answers ``POST /classify {"texts": [...]}`` with the same JSON shape as our service. The handler is an
``async def`` that calls the pipeline directly, so requests are answered strictly one after another (no
batching across requests) — what a first "wrap the model in an API" attempt looks like. ``/livez`` and
``/readyz`` answer 200 once the server listens, which happens only after the model is loaded.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PYTORCH_DIR = "pytorch"  # models.registry.bundle.PYTORCH_DIR; not imported so this file stands alone


def build_app(bundle_dir: Path, threads: int | None = None):
    """The FastAPI app with the pipeline loaded (raises FileNotFoundError when the bundle has no pytorch/)."""
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    checkpoint = Path(bundle_dir) / PYTORCH_DIR
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no config.json: point --bundle at a serving bundle written by `dapt export`"
        )
    if threads:
        torch.set_num_threads(threads)
    spec = json.loads((Path(bundle_dir) / "serving.json").read_text(encoding="utf-8"))
    classifier = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), device=-1)
    model_info = {
        "name": spec.get("name", "model"),
        "version": "baseline",
        "variant": "pytorch-fp32",
        "provider": f"torch {torch.__version__} CPU",
    }
    max_length = int(spec.get("max_length", 512))

    class ClassifyRequest(BaseModel):
        texts: list[str]

    app = FastAPI(title="naive baseline")

    @app.get("/livez")
    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/classify")
    async def classify(request: ClassifyRequest) -> dict[str, Any]:
        # Blocking call inside the event loop on purpose: one request at a time, no cross-request batching.
        outputs = classifier(request.texts, top_k=None, truncation=True, max_length=max_length)
        predictions = []
        for scores in outputs:
            best = max(scores, key=lambda item: item["score"])
            predictions.append(
                {
                    "label": best["label"],
                    "score": float(best["score"]),
                    "scores": {item["label"]: float(item["score"]) for item in scores},
                }
            )
        return {"model": model_info, "predictions": predictions}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", type=Path, required=True, help="Serving bundle folder (uses its pytorch/)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        app = build_app(args.bundle, args.threads)
    except FileNotFoundError as exc:
        print(f"naive_server: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
