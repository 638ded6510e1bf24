"""One flickr.photos.geo.getLocation call through the real flickrapi client, classified for the harvest.

flickrapi 2.4.0 facts this relies on (the project's notes on Flickr): `store_token=False` keeps the
token cache in memory (the default creates ~/.flickr/oauth-tokens.sqlite), `cache=False` (the default;
its cache would keep stat=fail replies and hide transient errors), `REST_URL` is a plain attribute that
can be set per instance, every call is an OAuth1-signed POST, non-200 replies raise
`FlickrError('do_request: Status code N received')` with `code=None`, and stat=fail raises
`FlickrError` with an int `code`. The requests Session is a class attribute shared by all instances,
so each client gets its own Session (thread safety of a shared one is not documented).

An answer is either photo-level (kept in the table, never asked again), transient (retried with
backoff), or key-level (the run stops with one line). A well-formed reply whose coordinates are out of
range is photo-level too (`bad_location`): asking again would only get the same coordinates.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import flickrapi
import requests

from geo_ssl.pipeline.geoimagenet.credentials import Credentials

DEFAULT_API_URL = flickrapi.FlickrAPI.REST_URL
METHOD = "flickr.photos.geo.getLocation"

#: Photo-level error codes: the answer about that photo, recorded as such and never retried.
PHOTO_CODES = {1: "not_found", 2: "no_location", 99: "permission_denied"}
#: Flickr's transient codes: 105 service unavailable, 201 (undocumented) API not currently available.
TRANSIENT_CODES = {105, 201}
#: Key-level codes: invalid key, bad or missing signature, login failed. Every later call would fail too.
KEY_CODES = {95: "SSL is required", 96: "invalid signature (check the secret)", 97: "missing signature",
             98: "login failed", 100: "invalid API key"}  # fmt: skip
_STATUS_RE = re.compile(r"Status code (\d+)")
PLACE_LEVELS = ("neighbourhood", "locality", "county", "region", "country")

# flickrapi logs every non-200 body at ERROR level; Python's last-resort handler would print it on stderr.
logging.getLogger("flickrapi").addHandler(logging.NullHandler())
logging.getLogger("flickrapi").propagate = False


@dataclass
class Answer:
    """The outcome of one HTTP call: kind is photo (final answer), transient or fatal."""

    kind: str
    status: str | None = None  # photo-level: ok | no_location | not_found | permission_denied | bad_location
    code: int | None = None
    message: str = ""
    values: dict = field(default_factory=dict)  # ok: lat, lon, accuracy, context, place names


def make_client(creds: Credentials, api_url: str, timeout: float) -> flickrapi.FlickrAPI:
    """A FlickrAPI that writes nothing to disk, caches nothing, and talks to `api_url`."""
    client = flickrapi.FlickrAPI(
        creds.api_key, creds.api_secret, format="parsed-json", store_token=False, cache=False, timeout=timeout
    )
    client.REST_URL = api_url
    client.flickr_oauth.session = requests.Session()  # instance attribute: not the class-wide one
    return client


def _num(value: object) -> float:
    """Flickr sends numbers as strings (modern replies) or as numbers (older ones)."""
    return float(value)  # type: ignore[arg-type]


class BadLocation(ValueError):
    """The reply parsed, but its coordinates are no place on Earth (|lat| > 90, |lon| > 180, NaN): Flickr's
    answer about this photo, the same on every call, so it is final, not a transient failure."""


def parse_location(reply: object) -> dict:
    """lat, lon, accuracy, context and place names from a parsed getLocation reply (KeyError/ValueError if
    odd; BadLocation if the coordinates are out of range)."""
    loc = reply["photo"]["location"]  # type: ignore[index]
    lat, lon = _num(loc["latitude"]), _num(loc["longitude"])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):  # NaN fails both comparisons
        raise BadLocation(f"coordinates out of range: lat={lat} lon={lon}")
    out = {
        "lat": lat,
        "lon": lon,
        "accuracy": int(_num(loc["accuracy"])) if loc.get("accuracy") not in (None, "") else None,
        "context": int(_num(loc["context"])) if loc.get("context") not in (None, "") else None,
    }
    for level in PLACE_LEVELS:
        node = loc.get(level)
        name = node.get("_content") if isinstance(node, dict) else None
        out[level] = name or None  # missing level and empty name are both "unknown"
    return out


def get_location(client: flickrapi.FlickrAPI, photo_id: int, creds: Credentials) -> Answer:
    """Call getLocation once and classify the result; never raises for an API or network failure."""
    try:
        reply = client.photos.geo.getLocation(photo_id=str(photo_id))
    except flickrapi.FlickrError as exc:
        msg = creds.scrub(exc)
        if exc.code is None:
            m = _STATUS_RE.search(str(exc))
            status = int(m.group(1)) if m else None
            if status is not None and (status == 429 or status >= 500):
                return Answer("transient", message=f"HTTP {status}")
            return Answer("fatal", message=f"HTTP {status} from the API URL (is --api-url right?)")
        if exc.code in PHOTO_CODES:
            return Answer("photo", PHOTO_CODES[exc.code], exc.code, msg)
        if exc.code in TRANSIENT_CODES:
            return Answer("transient", code=exc.code, message=msg)
        if exc.code in KEY_CODES:
            return Answer(
                "fatal", code=exc.code, message=f"Flickr refused the key: {KEY_CODES[exc.code]} ({msg})"
            )
        return Answer("fatal", code=exc.code, message=f"unexpected Flickr error: {msg}")
    except requests.exceptions.Timeout:
        return Answer("transient", message="timeout")
    except requests.exceptions.ConnectionError as exc:
        return Answer("transient", message=f"connection error ({type(exc).__name__})")
    except requests.exceptions.RequestException as exc:
        return Answer("transient", message=f"request failed ({type(exc).__name__})")
    except (ValueError, KeyError, TypeError) as exc:  # unparsable body, stat=fail without message
        return Answer("transient", message=f"unparsable reply ({type(exc).__name__})")
    try:
        values = parse_location(reply)
    except BadLocation as exc:
        return Answer("photo", "bad_location", message=str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return Answer("transient", message=f"unparsable location ({type(exc).__name__})")
    return Answer("photo", "ok", values=values)
