"""Build stages of geo-ssl: synthesise or index a data source, cluster coordinates, write WebDataset shards."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geo-ssl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
