"""Parsing one fMoW view: fields, real-data quirks, centroid, timestamps, and every reject reason."""

from __future__ import annotations

import copy
import io
import json
import math
from datetime import UTC, datetime

import pytest
from PIL import Image

from geo_ssl.pipeline.common.errors import RejectError
from geo_ssl.pipeline.fmow.records import (
    clip_box,
    footprint_centroid,
    load_json,
    object_box,
    parse_layout_path,
    parse_metadata,
    parse_timestamp,
    probe_jpeg,
    read_view,
)
from geo_ssl.schemas import REJECT_REASONS

FOUNTAIN_WKT = (
    "POLYGON ((8.58083601179 47.4475160925, 8.58532758821 47.4475160925, 8.58532758821 47.4505628631, "
    "8.58083601179 47.4505628631, 8.58083601179 47.4475160925))"
)


def fountain_meta() -> dict:
    """All fields of the real ground-truth JSON of fountain_514_1 (values as in the dump)."""
    return {
        "abs_cal_factors": [0.01260825, 0.009713071, 0.01103623],
        "approximate_wavelengths": [661, 545, 477],
        "bounding_boxes": [
            {
                "ID": -1,
                "box": [0, 0, 977, 663],
                "raw_category": "fountain",
                "crowd_rank": 0.662536,
                "raw_location": FOUNTAIN_WKT,
                "epsg": "4326",
                "spatial_reference": "GCS_WGS_1984",
            },
            {"ID": 47768, "box": [12, 6, 20, 14], "category": "fountain", "visible": "True"},
        ],
        "catalog_id": "105041000048BE00",
        "cloud_cover": 0,
        "country_code": "CHE",
        "epsg": "4326",
        "gsd": 0.468074887991,
        "img_filename": "fountain_514_1_rgb.tif",
        "img_height": 663,
        "img_width": 977,
        "mean_pixel_height": 4.595430769222e-06,
        "mean_pixel_width": 4.597314657113e-06,
        "multi_resolution_dbl": 1.87372982502,
        "multi_resolution_start_dbl": 1.81173229218,
        "multi_resolution_end_dbl": 1.93474543095,
        "multi_resolution_min_dbl": 1.81173229218,
        "multi_resolution_max_dbl": 1.93474543095,
        "off_nadir_angle_dbl": 21.8978748322,
        "off_nadir_angle_start_dbl": 21.0,
        "off_nadir_angle_end_dbl": 22.8,
        "off_nadir_angle_min_dbl": 21.0,
        "off_nadir_angle_max_dbl": 22.8,
        "pan_resolution_dbl": 0.468074887991,
        "pan_resolution_start_dbl": 0.452864,
        "pan_resolution_end_dbl": 0.48381,
        "pan_resolution_min_dbl": 0.452864,
        "pan_resolution_max_dbl": 0.48381,
        "raw_location": FOUNTAIN_WKT,
        "scan_direction": "Reverse",
        "sensor_platform_name": "GEOEYE01",
        "spatial_reference": "GCS_WGS_1984",
        "sun_azimuth_dbl": 159.207946777,
        "sun_azimuth_min_dbl": 159.1,
        "sun_azimuth_max_dbl": 159.3,
        "sun_elevation_dbl": 46.1834640503,
        "sun_elevation_min_dbl": 46.1,
        "sun_elevation_max_dbl": 46.3,
        "target_azimuth_dbl": 31.2082061768,
        "target_azimuth_start_dbl": 30.0,
        "target_azimuth_end_dbl": 32.0,
        "target_azimuth_min_dbl": 30.0,
        "target_azimuth_max_dbl": 32.0,
        "timestamp": "2012-04-02T10:32:22Z",
        "utm": "32T",
    }


def jpeg_bytes(size: tuple[int, int] = (48, 32), color: tuple[int, int, int] = (90, 120, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def noisy_jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    """A JPEG whose entropy-coded data dwarfs its header, so cutting it in half truncates the scan."""
    buf = io.BytesIO()
    pixels = bytes((i * 7919) % 251 for i in range(size[0] * size[1]))
    Image.frombytes("L", size, pixels).save(buf, "JPEG")
    return buf.getvalue()


def wilds_vertex_mean(wkt: str) -> tuple[float, float]:
    """(lat, lon) as WILDS computes it: the plain mean of every ring vertex, the closing one included."""
    ring = wkt[wkt.index("((") + 2 : wkt.index("))")]
    pairs = [tuple(float(v) for v in p.split()) for p in ring.split(",")]
    return sum(p[1] for p in pairs) / len(pairs), sum(p[0] for p in pairs) / len(pairs)


def reason_of(fn, *args) -> str:
    with pytest.raises(RejectError) as info:
        fn(*args)
    assert info.value.reason in REJECT_REASONS
    assert "\n" not in info.value.detail
    return info.value.reason


def test_parse_metadata_reads_the_real_field_set():
    meta = parse_metadata(fountain_meta())
    assert meta.timestamp_ms == int(datetime(2012, 4, 2, 10, 32, 22, tzinfo=UTC).timestamp()) * 1000
    assert meta.box == (12, 6, 20, 14)  # the object box, not the ID -1 whole-image entry
    assert meta.gsd == pytest.approx(0.468074887991)
    assert meta.cloud_cover == 0.0
    assert meta.country_code == "CHE"
    assert meta.sensor == "GEOEYE01"
    assert meta.off_nadir_deg == pytest.approx(21.8978748322)
    assert (meta.lat, meta.lon) == pytest.approx((47.4490394778, 8.5830818), abs=1e-10)


def test_real_quirks_are_accepted():
    meta = fountain_meta()
    del meta["abs_cal_factors"]
    meta["bounding_boxes"] = {"ID": 3, "box": [1, 2, 3, 4], "category": "fountain"}  # dict, not list
    meta["some_future_field"] = {"nested": [1, 2]}
    meta["cloud_cover"] = "n/a"  # unusable optional values become null, they do not reject the view
    meta["country_code"] = "KO-"  # invalid real code, kept as is
    parsed = parse_metadata(meta)
    assert parsed.box == (1, 2, 3, 4)
    assert parsed.cloud_cover is None
    assert parsed.country_code == "KO-"


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([{"ID": 5, "box": [0, 0, 10, 10]}], (0, 0, 10, 10)),
        ([{"ID": -1, "box": [0, 0, 99, 99]}, {"ID": 7, "box": [1, 1, 5, 5]}], (1, 1, 5, 5)),
        ([{"ID": "-1", "box": [0, 0, 99, 99]}, {"ID": 7, "box": [1.0, 1.0, 5.0, 5.0]}], (1, 1, 5, 5)),
        ({"box": [2, 3, 4, 5]}, (2, 3, 4, 5)),
    ],
)
def test_object_box_forms(boxes, expected):
    assert object_box(boxes) == expected


@pytest.mark.parametrize(
    "boxes",
    [
        [],
        None,
        "0 0 1 1",
        [{"ID": -1, "box": [0, 0, 9, 9]}],  # only the whole-image entry
        [{"ID": 1, "box": [0, 0, 9]}],
        [{"ID": 1, "box": [0, 0, "9", 9]}],
        [{"ID": 1, "box": [0, 0, 0, 9]}],
        [{"ID": 1, "box": [0.5, 0, 3, 9]}],
        [{"ID": 1}],
    ],
)
def test_malformed_boxes_are_bad_box(boxes):
    assert reason_of(object_box, boxes) == "bad_box"


def test_edge_boxes_are_clipped_and_flagged_only_outside_boxes_rejected():
    assert clip_box((0, 0, 48, 32), 48, 32) == ((0, 0, 48, 32), False)
    assert clip_box((30, 0, 20, 10), 48, 32) == ((30, 0, 18, 10), True)  # one edge, by 2 px
    assert clip_box((-1, 0, 5, 5), 48, 32) == ((0, 0, 4, 5), True)
    assert clip_box((-10, -10, 100, 100), 48, 32) == ((0, 0, 48, 32), True)  # all four edges
    assert clip_box((47, 31, 5, 5), 48, 32) == ((47, 31, 1, 1), True)  # one pixel inside
    for outside in [(48, 0, 5, 5), (0, 32, 5, 5), (-5, 0, 5, 5), (0, -9, 4, 9)]:  # touching is not inside
        assert reason_of(clip_box, outside, 48, 32) == "bad_box"


def test_centroid_of_a_rectangle_and_the_wilds_bias():
    lat, lon = footprint_centroid(FOUNTAIN_WKT)
    # The dump's own `coordinates` field holds this point: [8.5830818, 47.4490394778].
    assert lat == pytest.approx(47.4490394778, abs=1e-10)
    assert lon == pytest.approx(8.5830818, abs=1e-10)
    # WILDS averages all five ring vertices; the repeated first corner drags the point south-west.
    wlat, wlon = wilds_vertex_mean(FOUNTAIN_WKT)
    assert wlon == pytest.approx(lon - (8.58532758821 - 8.58083601179) / 10, abs=1e-10)
    assert wlat == pytest.approx(lat - (47.4505628631 - 47.4475160925) / 10, abs=1e-10)
    east_west_m = (lon - wlon) * 111_320 * math.cos(math.radians(lat))
    assert east_west_m > 30  # about 34 m on a 340 m wide footprint


def test_centroid_of_a_non_symmetric_footprint():
    # Quad (0,0) (4,0) (4,4) (0,2) scaled by 1e-3 deg around (10 E, 45 N): a 4x2 rectangle plus a
    # triangle, whose area centroid is (20/9, 14/9) in the local units.
    pts = [(0, 0), (4, 0), (4, 4), (0, 2), (0, 0)]
    wkt = "POLYGON ((" + ", ".join(f"{10 + x * 1e-3!r} {45 + y * 1e-3!r}" for x, y in pts) + "))"
    lat, lon = footprint_centroid(wkt)
    assert lon == pytest.approx(10 + 20 / 9 * 1e-3, abs=1e-12)
    assert lat == pytest.approx(45 + 14 / 9 * 1e-3, abs=1e-12)
    wlat, wlon = wilds_vertex_mean(wkt)
    assert (wlon, wlat) == pytest.approx((10 + 1.6e-3, 45 + 1.2e-3), abs=1e-12)
    assert abs(wlon - lon) > 5e-4 and abs(wlat - lat) > 3e-4


def test_centroid_across_the_antimeridian():
    lat, lon = footprint_centroid(
        "POLYGON ((179.998 10, -179.998 10, -179.998 10.002, 179.998 10.002, 179.998 10))"
    )
    assert lat == pytest.approx(10.001, abs=1e-9)
    assert abs(abs(lon) - 180) < 1e-9


@pytest.mark.parametrize(
    ("wkt", "reason"),
    [
        ("POLYGON ((nan 1, 2 1, 2 2, 1 2, nan 1))", "bad_coordinates"),
        ("POLYGON ((1 1, 2 1, 2 inf, 1 1))", "bad_coordinates"),
        ("POLYGON ((1 89, 2 89, 2 95, 1 95, 1 89))", "bad_coordinates"),
        ("POLYGON ((181 1, 182 1, 182 2, 181 1))", "bad_coordinates"),
        ("POLYGON ((0 0, 1 1, 1 0, 0 1, 0 0))", "bad_polygon"),  # self-intersecting bow tie
        ("POLYGON ((0 0, 1 0, 2 0, 0 0))", "bad_polygon"),  # no area
        ("POLYGON EMPTY", "bad_polygon"),
        ("POINT (1 2)", "bad_polygon"),
        ("POLYGON ((1 1, 2 1, 2 2))", "bad_polygon"),  # ring not closed
        ("not wkt at all", "bad_polygon"),
        ("", "bad_polygon"),
        (None, "bad_polygon"),
    ],
)
def test_footprint_rejects(wkt, reason):
    assert reason_of(footprint_centroid, wkt) == reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2012-04-02T10:32:22Z", datetime(2012, 4, 2, 10, 32, 22, tzinfo=UTC)),
        ("2012-04-02T10:32:22.123Z", datetime(2012, 4, 2, 10, 32, 22, 123000, tzinfo=UTC)),
        ("2012-04-02T10:32:22.123456789Z", datetime(2012, 4, 2, 10, 32, 22, 123000, tzinfo=UTC)),
        ("2012-04-02T10:32:22+00:00", datetime(2012, 4, 2, 10, 32, 22, tzinfo=UTC)),
        ("2012-04-02T12:32:22+02:00", datetime(2012, 4, 2, 10, 32, 22, tzinfo=UTC)),
        ("2012-04-02 10:32:22", datetime(2012, 4, 2, 10, 32, 22, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_timestamps_become_utc_milliseconds(text, expected):
    assert parse_timestamp(text) == round(expected.timestamp() * 1000)


@pytest.mark.parametrize("value", ["", None, 1333362742, "yesterday", "2012-04-02", "2012-13-02T00:00:00Z"])
def test_bad_timestamps(value):
    assert reason_of(parse_timestamp, value) == "bad_timestamp"


@pytest.mark.parametrize("field", ["raw_location", "timestamp", "bounding_boxes"])
def test_absent_required_field_is_missing_field(field):
    meta = fountain_meta()
    del meta[field]
    with pytest.raises(RejectError) as info:
        parse_metadata(meta)
    assert info.value.reason == "missing_field"
    assert field in info.value.detail


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("raw_location", None, "bad_polygon"),
        ("timestamp", "", "bad_timestamp"),
        ("bounding_boxes", [], "bad_box"),
    ],
)
def test_present_but_empty_field_gets_the_specific_reason(field, value, reason):
    meta = copy.deepcopy(fountain_meta())
    meta[field] = value
    assert reason_of(parse_metadata, meta) == reason


@pytest.mark.parametrize("data", [b"", b"  \n", b"{", b"[1, 2]", b'"text"', b"\xff\xfe{"])
def test_bad_json(data):
    assert reason_of(load_json, data) == "bad_json"


def test_load_json_accepts_an_object():
    assert load_json(b'{"a": 1}') == {"a": 1}


def test_probe_jpeg_reads_the_header_and_checks_the_end():
    data = jpeg_bytes((48, 32))
    info = probe_jpeg(io.BytesIO(data), len(data))
    assert (info.width, info.height) == (48, 32)
    padded = data + b"\x00" * 16  # zero padding after the EOI marker is tolerated
    assert probe_jpeg(io.BytesIO(padded), len(padded)).width == 48
    noisy = noisy_jpeg_bytes()
    cut = noisy[: len(noisy) // 2]  # ends inside the entropy-coded data
    assert reason_of(probe_jpeg, io.BytesIO(cut), len(cut)) == "truncated_image"
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert reason_of(probe_jpeg, io.BytesIO(png.getvalue()), len(png.getvalue())) == "unreadable_image"
    assert reason_of(probe_jpeg, io.BytesIO(b""), 0) == "unreadable_image"
    assert reason_of(probe_jpeg, io.BytesIO(data[:10]), 10) == "unreadable_image"


def test_probe_reads_the_real_fmow_jpeg(shared_dir):
    path = shared_dir / "data" / "airport_0_0_msrgb.jpg"
    with open(path, "rb") as f:
        info = probe_jpeg(f, path.stat().st_size)
    assert (info.width, info.height) == (2050, 1578)


def test_layout_path():
    layout = parse_layout_path("/data/fmow/val/multi-unit_residential/multi-unit_residential_12/"
                               "multi-unit_residential_12_3_rgb.jpg")  # fmt: skip
    assert (layout.split, layout.category, layout.location_id, layout.view_id) == (
        "val", "multi-unit_residential", "multi-unit_residential_12", 3,
    )  # fmt: skip
    assert layout.category_index == 30
    assert layout.location_key == "val-multi-unit_residential_12"
    for bad in [
        "train/castle/castle_1/castle_1_0_rgb.jpg",  # not one of the 62 names
        "train/zoo/zoo_1/zoo_2_0_rgb.jpg",  # file name does not match its folder
        "test/0011978/0011979_0_rgb.jpg",  # anonymised layout, file name does not match its folder
        "test/0011978/x/0011978_0_rgb.jpg",
    ]:
        assert reason_of(parse_layout_path, bad) == "bad_path"


def test_anonymised_test_and_seq_layouts_have_no_category():
    for split, ident, view in [("test", "0011978", 0), ("seq", "0000007", 12)]:
        layout = parse_layout_path(f"/data/fmow-rgb/{split}/{ident}/{ident}_{view}_rgb.jpg")
        assert (layout.split, layout.location_id, layout.view_id, layout.kind) == (split, ident, view, "rgb")
        assert (layout.category, layout.category_index) == ("unknown", -1)
        assert layout.location_key == f"{split}-{ident}"
    assert parse_layout_path("test/0011978/0011978_3_msrgb.json").kind == "msrgb"


def test_read_view_clips_an_edge_box_and_reads_an_anonymised_view(tmp_path):
    folder = tmp_path / "test" / "0011978"
    folder.mkdir(parents=True)
    image = folder / "0011978_2_rgb.jpg"
    image.write_bytes(jpeg_bytes((48, 32)))
    meta = fountain_meta()
    meta["bounding_boxes"][1]["box"] = [40, 20, 20, 20]  # crosses the right and bottom edges
    (folder / "0011978_2_rgb.json").write_text(json.dumps(meta))
    rec = read_view(
        "test/0011978/0011978_2_rgb.jpg", str(image), str(image)[:-4] + ".json", lambda u: open(u, "rb")
    )
    assert (rec.location_key, rec.location_id, rec.view_id) == ("test-0011978", "0011978", 2)
    assert (rec.category, rec.category_index) == ("unknown", -1)
    assert (rec.box, rec.box_clipped) == ((40, 20, 8, 12), True)


def test_read_view_end_to_end(tmp_path):
    folder = tmp_path / "train" / "fountain" / "fountain_514"
    folder.mkdir(parents=True)
    image = folder / "fountain_514_1_rgb.jpg"
    image.write_bytes(jpeg_bytes((48, 32)))
    meta_path = folder / "fountain_514_1_rgb.json"
    meta_path.write_text(json.dumps(fountain_meta()))
    rel = "train/fountain/fountain_514/fountain_514_1_rgb.jpg"
    rec = read_view(rel, str(image), str(meta_path), lambda u: open(u, "rb"))
    assert (rec.location_key, rec.view_id, rec.category_index) == ("train-fountain_514", 1, 19)
    assert (rec.img_width, rec.img_height) == (48, 32)  # from the JPEG, not the JSON's 977x663
    assert rec.box_clipped is False
    assert rec.file_size == image.stat().st_size
    assert reason_of(read_view, rel, None, str(meta_path), open) == "missing_image"
    assert reason_of(read_view, rel, str(image), None, open) == "bad_json"
