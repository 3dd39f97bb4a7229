"""The registry: the bundle contract, the versioned store (schema, artifacts, aliases, audit), the promotion
gate and the model card. Light at import: the serving process reads the bundle contract from here."""
