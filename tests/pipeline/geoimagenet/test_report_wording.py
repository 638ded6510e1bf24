"""The build report's contact sheet speaks of the source it shows: a GeoImageNet build used to be drawn with
"the fMoW object box" (a red frame around the whole photo) and a capture date of 1970-01-01."""

from __future__ import annotations

import numpy as np
from PIL import Image

from geo_ssl.pipeline.geoimagenet.flickr_standin import load_photo_table
from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions, harvest_flickr
from geo_ssl.pipeline.geoimagenet.index import index_imagenet
from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet
from geo_ssl.pipeline.report import contact_sheet
from geo_ssl.pipeline.report.contact_sheet import WORDING, draw_contact_sheet, source_of, view_date
from tests.index_factory import make_index


def _box_pixels(png) -> int:
    """Pixels in the object-box red: the frame drawn around each view's box."""
    return int((np.asarray(Image.open(png).convert("RGB")) == contact_sheet._BOX).all(axis=-1).sum())


def test_a_geoimagenet_sheet_draws_no_object_box_and_no_1970_date(
    tmp_path, standin_factory, flickr_env
) -> None:
    world = synth_imagenet(str(tmp_path / "synth"), classes=2, per_class=6, seed=3)
    server = standin_factory(load_photo_table(world["photos"]))
    opts = HarvestOptions(api_url=server.url, rate_limit=3600 * 200, concurrency=4, batch=50, retry_base=0.01)
    harvest_flickr(world["urls"], str(tmp_path / "harvest"), opts)
    index = str(tmp_path / "index")
    index_imagenet(world["root"], str(tmp_path / "harvest"), index, words=world["words"])
    assert source_of(index) == "geoimagenet"

    png = draw_contact_sheet(str(tmp_path / "no-shards"), index, str(tmp_path / "sheet.png"), n=3)
    assert png and _box_pixels(png) == 0
    # the same locations drawn with the fMoW words do get the red frame: the count above can fail
    locations = contact_sheet._from_index(contact_sheet.tables.read_table(
        f"{index}/images.parquet", "image_index"), {}, 3, 0)  # fmt: skip
    assert {view_date(v["timestamp"]) for loc in locations for v in loc["views"]} == {"date unknown"}
    contact_sheet._render(locations, 1, 8, "t", "fmow").save(tmp_path / "fmow-words.png")
    assert _box_pixels(tmp_path / "fmow-words.png") > 0
    assert "fMoW" not in " ".join(WORDING["geoimagenet"].values())


def test_an_fmow_sheet_keeps_its_box_and_dates(tmp_path) -> None:
    index = make_index(tmp_path / "fmow", n_locations=4, views=(2, 3)).index
    assert source_of(str(index)) == "fmow"
    png = draw_contact_sheet(str(tmp_path / "no-shards"), str(index), str(tmp_path / "sheet.png"), n=2)
    assert png and _box_pixels(png) > 0
    assert view_date("2016-08-07T10:11:12Z") == "2016-08-07"
