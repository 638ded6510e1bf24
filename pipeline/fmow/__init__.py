"""The fMoW-rgb data source: its tree layout, its per-image JSON records, the indexer and a synthetic generator."""
