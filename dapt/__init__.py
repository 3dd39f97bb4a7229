"""dapt: domain-adaptive pretraining to a served model. Importing has no side effects."""

__version__ = "0.1.0"
