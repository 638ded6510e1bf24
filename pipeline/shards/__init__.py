"""Shard machinery shared by every data source: plan, write, manifest and card, sample format, validate."""
