"""Streaming input: shard lists, tar reading, view selection, decode, augmentation and the public loaders."""
