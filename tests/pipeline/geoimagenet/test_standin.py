"""The Flickr stand-in answers as the real service does, seen through flickrapi 2.4.0 and plain HTTP."""

from __future__ import annotations

import json
import urllib.request

import flickrapi
import pytest

from tests.pipeline.geoimagenet.conftest import KEY, SECRET

PHOTOS = {
    "52192984450": {"id": "52192984450", "behaviour": "ok", "lat": 53.560182, "lon": -2.686562, "accuracy": 14,
                    "places": {"locality": "Shevington", "county": "Wigan", "region": "England", "country": "UK",
                               "neighbourhood": ""}},
    "14654888764": {"id": "14654888764", "behaviour": "ok", "lat": 37.791125, "lon": -122.399187, "accuracy": 16,
                    "shape": "old", "places": {"locality": "San Francisco"}},
    "2": {"id": "2", "behaviour": "geo_not_public"},
}  # fmt: skip


def _client(url: str, fmt: str, secret: str = SECRET) -> flickrapi.FlickrAPI:
    f = flickrapi.FlickrAPI(KEY, secret, format=fmt, store_token=False, cache=False, timeout=5)
    f.REST_URL = url
    return f


def test_json_reply_shapes(standin_factory, flickr_env) -> None:
    s = standin_factory(PHOTOS)
    f = _client(s.url, "parsed-json")
    modern = f.photos.geo.getLocation(photo_id="52192984450")
    assert modern == {"photo": {"id": "52192984450", "location": {
        "latitude": "53.560182", "longitude": "-2.686562", "accuracy": "14", "context": "0",
        "neighbourhood": {"_content": ""}, "locality": {"_content": "Shevington"}, "county": {"_content": "Wigan"},
        "region": {"_content": "England"}, "country": {"_content": "UK"}}}, "stat": "ok"}  # fmt: skip
    old = f.photos.geo.getLocation(photo_id="14654888764")["photo"]["location"]
    assert old["latitude"] == 37.791125 and old["accuracy"] == 16 and "woeid" in old["locality"]
    assert "region" not in old  # missing place level
    with pytest.raises(flickrapi.FlickrError) as info:
        f.photos.geo.getLocation(photo_id="2")
    assert info.value.code == 2


def test_xml_replies_and_errors(standin_factory, flickr_env) -> None:
    s = standin_factory(PHOTOS)
    rsp = _client(s.url, "etree").photos.geo.getLocation(photo_id="52192984450")
    loc = rsp.find("photo/location")
    assert rsp.get("stat") == "ok" and loc.get("latitude") == "53.560182"
    assert loc.find("locality").text == "Shevington" and loc.find("neighbourhood").text is None
    with pytest.raises(flickrapi.FlickrError) as info:
        _client(s.url, "xmlnode").photos.geo.getLocation(photo_id="999")
    assert info.value.code == 1
    with pytest.raises(flickrapi.FlickrError) as info:
        _client(s.url, "etree", secret="wrong").photos.geo.getLocation(photo_id="2")
    assert info.value.code == 96  # the HMAC-SHA1 signature is checked with the secret


def test_plain_http_get_with_api_key_and_callback(standin_factory) -> None:
    s = standin_factory(PHOTOS)
    q = "method=flickr.photos.geo.getLocation&format=json&photo_id=52192984450"
    with urllib.request.urlopen(f"{s.url}?{q}&api_key={KEY}", timeout=5) as r:
        body = r.read().decode()
    assert body.startswith("jsonFlickrApi(") and body.endswith(")")
    with urllib.request.urlopen(f"{s.url}?{q}&api_key=nope&nojsoncallback=1", timeout=5) as r:
        assert r.status == 200
        fail = json.loads(r.read())
    assert fail == {"stat": "fail", "code": 100, "message": "Invalid API Key (Key has invalid format)"}
    with urllib.request.urlopen(f"{s.url}?{q}&api_key={KEY}&nojsoncallback=1&format=soap", timeout=5) as r:
        assert b'<err code="111" msg="Format &quot;soap&quot; not found" />' in r.read()
    stats = json.loads(urllib.request.urlopen(s.url.replace("/services/rest/", "/_stats"), timeout=5).read())
    assert stats["calls"]["52192984450"] == 3


def test_faults_reach_flickrapi_as_the_real_ones_do(standin_factory, flickr_env) -> None:
    import requests

    s = standin_factory(PHOTOS, faults=["429", "503", "drop", "201", "garbage"])
    f = _client(s.url, "parsed-json")
    for expected in ("Status code 429", "Status code 503"):
        with pytest.raises(flickrapi.FlickrError, match=expected) as info:
            f.photos.geo.getLocation(photo_id="2")
        assert info.value.code is None
    with pytest.raises(requests.exceptions.ConnectionError):
        f.photos.geo.getLocation(photo_id="2")
    with pytest.raises(flickrapi.FlickrError) as info:
        f.photos.geo.getLocation(photo_id="2")
    assert info.value.code == 201
    with pytest.raises(ValueError):
        f.photos.geo.getLocation(photo_id="2")
