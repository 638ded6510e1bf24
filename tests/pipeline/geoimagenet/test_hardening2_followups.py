"""Issue 17 (hardening 2), follow-ups in the GeoImageNet path: index-imagenet reading a harvest on object
storage, and coordinates out of range as a photo-level answer."""

from __future__ import annotations

import pyarrow.parquet as pq

from geo_ssl.pipeline.geoimagenet.flickr_standin import load_photo_table
from geo_ssl.pipeline.geoimagenet.harvest import harvest_flickr
from geo_ssl.pipeline.geoimagenet.index import index_imagenet
from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet
from tests.pipeline.geoimagenet.conftest import make_photos, write_urls
from tests.pipeline.geoimagenet.test_harvest import _opts, _table

# ---- follow-up of item 6: index-imagenet --harvest s3://... ------------------------------------------------


def test_index_imagenet_reads_a_harvest_on_object_storage(tmp_path, standin_factory, flickr_env) -> None:
    """The harvest's entries were read with pyarrow's own S3 client, which ignores the project's endpoint."""
    from tests.s3_support import bucket_fs, s3_with_faults

    world = synth_imagenet(str(tmp_path / "synth"), classes=2, per_class=8, seed=5)
    s = standin_factory(load_photo_table(world["photos"]))
    harvest = "s3://geo-ssl-index-followups/h"
    with s3_with_faults("geo-ssl-index-followups") as endpoint:
        harvest_flickr(world["urls"], harvest, _opts(s.url))
        remote = index_imagenet(world["root"], harvest, str(tmp_path / "index-remote"), words=world["words"])
        bucket_fs(endpoint.url).get("geo-ssl-index-followups/h", str(tmp_path / "h"), recursive=True)
    local = index_imagenet(
        world["root"], str(tmp_path / "h"), str(tmp_path / "index-local"), words=world["words"]
    )
    assert remote.written > 0 and remote.reconciles
    assert (remote.written, remote.rejected, remote.skipped) == (local.written, local.rejected, local.skipped)
    for name in ("geoimagenet_images.parquet", "images.parquet", "sample_extras.parquet"):
        got = pq.read_table(tmp_path / "index-remote" / name).to_pylist()
        assert got == pq.read_table(tmp_path / "index-local" / name).to_pylist(), name


# ---- coordinates out of range: a photo-level answer, not a transient failure --------------------------------


def test_coordinates_out_of_range_are_a_final_reject(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(9)
    photos["1000"].update(lat=120.0, shape="modern")  # latitude past the pole
    photos["1002"].update(lon=-200.5, shape="old")  # longitude past the antimeridian, numbers not strings
    write_urls(tmp_path / "urls.txt", photos)
    s = standin_factory(photos)
    out = tmp_path / "out"
    first = harvest_flickr(str(tmp_path / "urls.txt"), str(out), _opts(s.url))
    calls = s.state.stats()["calls"]
    assert calls["1000"] == 1 and calls["1002"] == 1  # asked once, not retried
    assert first.reconciles and first.skipped == 0
    assert first.reasons["bad_location"] == 2 and first.extra["by_status"]["bad_location"] == 2
    table = _table(out)
    for pid, text in ((1000, "lat=120"), (1002, "lon=-200.5")):
        row = table[pid]
        assert row["status"] == "bad_location" and row["lat"] is None and row["lon"] is None
        assert text in row["error_message"] and row["attempts"] == 1
    requests = s.state.stats()["requests"]
    again = harvest_flickr(str(tmp_path / "urls.txt"), str(out), _opts(s.url))
    assert again.extra["calls_this_run"] == 0 and s.state.stats()["requests"] == requests
    assert (again.rejected, again.reasons["bad_location"], again.skipped) == (first.rejected, 2, 0)
