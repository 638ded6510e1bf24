"""URL lists in: every Flickr URL form, rejects with reasons, dedupe, broken encodings."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.geoimagenet.urls import flickr_photo_id, parse_line, parse_url_list, unique_photo_ids

FORMS = [
    ("http://farm4.static.flickr.com/3175/2737866473_7958dc8760.jpg", 2737866473),
    ("http://farm1.static.flickr.com/2/1418878_1e92283336_m.jpg", 1418878),
    ("http://static.flickr.com/104/290431162_4fbaa6c2a3.jpg", 290431162),
    ("http://static.flickr.com/104/290431162_4fbaa6c2a3_t.jpg", 290431162),
    ("https://farm8.staticflickr.com/7412/9000000001_abcdef0123_b.jpg", 9000000001),
    ("http://c1.staticflickr.com/9/8671/16007429391_0a1b2c3d4e_z.jpg", 16007429391),
    ("https://live.staticflickr.com/65535/52192984450_5f2e1d0c9b_k.jpg", 52192984450),
    ("https://live.staticflickr.com/65535/52192984450_5f2e1d0c9b_3k.jpg", 52192984450),
    ("http://photos1.flickr.com/12345_abcdef0123_b.jpg", 12345),
    ("http://photos23.flickr.com/7/12346_abcdef0123.jpg", 12346),
    ("http://farm3.static.flickr.com/2531/4094333885_e8462a8338_o.png", 4094333885),
    ("http://farm3.static.flickr.com/2531/4094333885_e8462a8338.JPG?v=0", 4094333885),
    ("HTTP://FARM3.STATIC.FLICKR.COM/2531/4094333885_E8462A8338.JPEG", 4094333885),
    ("farm2.static.flickr.com/1/77_ab.gif", 77),
    ("https://www.flickr.com/photos/someuser/14654888764", 14654888764),
    ("http://www.flickr.com/photos/12345678@N00/14654888764/in/photostream/", 14654888764),
    ("https://flickr.com/photos/someuser/14654888765/", 14654888765),
]


@pytest.mark.parametrize(("url", "pid"), FORMS)
def test_every_flickr_url_form(url: str, pid: int) -> None:
    assert flickr_photo_id(url) == pid
    status, value = parse_line(f"n01440764_7\t{url}\r\n".encode())
    assert status == "ok" and value == (pid, "n01440764", 7)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"n01440764_1 http://farm1.static.flickr.com/2/1_ab.jpg\n", "malformed_line"),  # no tab
        (b"n01440764_2\t\n", "malformed_line"),
        (b"\thttp://farm1.static.flickr.com/2/1_ab.jpg\n", "malformed_line"),
        (b"fish_2\thttp://farm1.static.flickr.com/2/1_ab.jpg\n", "bad_key"),
        (b"n01440764_x\thttp://farm1.static.flickr.com/2/1_ab.jpg\n", "bad_key"),
        (b"n0144\xff764_3\thttp://farm1.static.flickr.com/2/1_ab.jpg\n", "bad_key"),
        (b"n01440764_4\thttp://images.fineartamerica.com/images-medium/fish.jpg\n", "not_flickr"),
        (b"n01440764_5\thttp://upload.wikimedia.org/wikipedia/commons/a/ab/Tench.jpg\n", "not_flickr"),
        (b"n01440764_6\thttp://notflickr.com/photos/u/123\n", "not_flickr"),
        (b"n01440764_7\thttp://caf\xe9.example.com/\xe9t\xe9.jpg\n", "not_flickr"),  # Latin-1
        (b"n01440764_8\thttp://www.flickr.com/photos/someuser/\n", "unrecognised_flickr_url"),
        (b"n01440764_9\thttp://farm1.static.flickr.com/2/notanid.jpg\n", "unrecognised_flickr_url"),
        (b"n01440764_10\thttp://farm1.static.flickr.com/2/1_ab.jpg@evil\n", "unrecognised_flickr_url"),
    ],
)
def test_rejects_carry_a_reason(line: bytes, reason: str) -> None:
    status, value = parse_line(line)
    assert status == reason
    assert isinstance(value[1], str)


def test_stream_dedupes_and_counts(tmp_path) -> None:
    lines = [
        b"n01440764_1\thttp://farm1.static.flickr.com/2/111_ab.jpg\n",
        b"n01443537_9\thttps://live.staticflickr.com/65535/111_ab_b.jpg\n",  # same photo, another class
        b"n01443537_10\thttp://farm1.static.flickr.com/2/222_cd.jpg\r\n",
        b"\n",
        b"garbage without tab\n",
        b"n01440764_2\thttp://caf\xc3\xa9.example.com/x.jpg\n",  # UTF-8, not Flickr
        b"n01440764_3\thttp://\xff\xfe\x00broken\n",  # not text at all
        b"n01440764_4\thttp://farm1.static.flickr.com/2/333_ef.jpg",  # last line without newline
    ]
    src = tmp_path / "fall11_urls.txt"
    src.write_bytes(b"".join(lines))
    out = tmp_path / "entries.parquet"
    res = parse_url_list(str(src), str(out), batch=2)
    assert res["lines"] == 8 and res["blank_lines"] == 1
    assert res["entries"] == 4
    assert res["reasons"] == {"malformed_line": 1, "not_flickr": 2}
    assert res["lines"] == res["blank_lines"] + res["entries"] + res["rejected"]
    assert [r["detail"] for r in res["rejects"]][1] == "http://café.example.com/x.jpg"
    assert res["rejects"][2]["detail"].startswith("http://ÿþ")
    table = pq.read_table(out)
    assert table.column("photo_id").to_pylist() == [111, 111, 222, 333]
    assert table.column("wnid").to_pylist() == ["n01440764", "n01443537", "n01443537", "n01440764"]
    assert unique_photo_ids(str(out)).tolist() == [111, 222, 333]


def test_compressed_lists_stream_too(tmp_path) -> None:
    import gzip

    data = b"n01440764_1\thttp://farm1.static.flickr.com/2/111_ab.jpg\nn01440764_2\thttp://x.org/a.jpg\n"
    (tmp_path / "urls.txt.gz").write_bytes(gzip.compress(data))
    res = parse_url_list(str(tmp_path / "urls.txt.gz"), str(tmp_path / "e.parquet"))
    assert (res["lines"], res["entries"], res["reasons"]) == (2, 1, {"not_flickr": 1})
