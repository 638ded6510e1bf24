"""Streaming SSL trainers on geo-ssl shards: MoCo-v2 (+temporal positives, +geo head), SimCLR, evaluation and export."""
