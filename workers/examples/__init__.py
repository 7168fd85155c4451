"""Bundled examples: models and data loaders to train with ``python -m jobs.train``."""
