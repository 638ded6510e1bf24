"""GeoImageNet: ImageNet URL lists -> Flickr coordinates (rate-limited harvest, YFCC join) -> geo index -> shards."""
