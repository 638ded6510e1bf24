"""Helpers every stage shares: fsspec I/O with atomic writes, progress and summaries, schema'd tables, errors, sphere maths."""
