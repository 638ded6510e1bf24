"""Fixtures for the GeoImageNet tests: a URL list, a photo table and a stand-in over real HTTP."""

from __future__ import annotations

import pytest

from geo_ssl.pipeline.geoimagenet.flickr_standin import FlickrStandin

KEY = "k3yABCDEF0123456789abcdef0123456"
SECRET = "s3cr3tFEDCBA9876"


def make_photos(n: int = 40) -> dict[str, dict]:
    """Photo table: mostly located, every other behaviour present, both reply shapes, missing places."""
    behaviours = [
        "ok",
        "ok",
        "ok",
        "no_location",
        "ok",
        "not_found",
        "ok",
        "permission_denied",
        "geo_not_public",
    ]
    photos = {}
    for i in range(n):
        pid = str(1000 + i)
        b = behaviours[i % len(behaviours)]
        row = {"id": pid, "behaviour": b}
        if b == "ok":
            row.update(lat=-60 + 3 * i, lon=-170 + 8 * i, accuracy=1 + i % 16,
                       places={"locality": f"Town {i}", "country": "Land"} if i % 2 else {"region": "R"},
                       shape="old" if i % 5 == 0 else "modern")  # fmt: skip
        photos[pid] = row
    return photos


def write_urls(path, photos: dict[str, dict], extra_lines: bytes = b"") -> None:
    lines = []
    for j, pid in enumerate(sorted(photos)):
        lines.append(
            f"n0144{j % 3:04d}_{j}\thttp://farm{j % 9}.static.flickr.com/{j}/{pid}_ab12cd_m.jpg\n".encode()
        )
    lines.append(b"n01440000_999\thttps://live.staticflickr.com/65535/1000_ffee_b.jpg\n")  # same photo again
    lines.append(b"n01440000_1000\thttp://images.example.com/fish.jpg\n")
    lines.append(b"bad line\n")
    lines.append(b"n01440000_1001\thttp://farm1.static.flickr.com/2/77777_ab.jpg\n")  # photo not in the table
    path.write_bytes(b"".join(lines) + extra_lines)


@pytest.fixture
def standin_factory():
    servers = []

    def start(photos, **kwargs) -> FlickrStandin:
        s = FlickrStandin(photos, KEY, SECRET, **kwargs).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def flickr_env(monkeypatch, tmp_path_factory):
    """Key and secret in the environment; HOME empty, so a token store written by flickrapi would show."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FLICKR_API_KEY", KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", SECRET)
    monkeypatch.setenv("HOME", str(home))
    yield home
    assert not any(home.iterdir()), "flickrapi wrote to HOME (token store or cache)"
