"""Model lifecycle as a pure library: data, adapt, finetune, evaluate, export, registry. Never imports Prefect or BentoML."""
