"""Training: domain adaptation (continued MLM, replay, vocabulary extension, head warm-up, from scratch),
forgetting measurement, task fine-tuning with augmentation and hyperparameter search."""
