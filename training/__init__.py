"""Streaming SSL trainers on geo-ssl shards: MoCo-v2 (+temporal positives, +geo head), SimCLR, BYOL, plug-in
methods, evaluation and export."""
