"""Routing rules: line-aware YAML loading, validation, compilation to the engine, checks, diff."""
