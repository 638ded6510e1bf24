"""Build stages of geo-ssl: synthesise or index fMoW, cluster coordinates, write WebDataset shards."""

__version__ = "0.1.0"
