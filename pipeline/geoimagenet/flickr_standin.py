"""A local stand-in for Flickr's REST endpoint (flickr.photos.geo.getLocation), for tests and the demo.

It answers the way the real service does as far as the flickrapi 2.4.0 client can tell (see
`../shared/notes/flickr.md` of the project's research): POST form bodies (GET with a query string
too), the key in the OAuth1 `Authorization` header with an HMAC-SHA1 signature over the URL the
client used (checked with oauthlib; a plain `api_key` field is accepted as unauthenticated calls do),
JSON (`format=json`, wrapped as `jsonFlickrApi(...)` without `nojsoncallback=1`) and XML
(`format=rest`) replies, every API error as HTTP 200 with `stat=fail`, a code and a message, numbers
as strings (modern shape) or as numbers with place ids (the older shape), place levels missing.

Faults are injectable: a global queue consumed one request at a time, per-photo fault lists consumed on
that photo's successive calls, and a seeded random fault rate: HTTP 429/500/502/503, codes 105 and 201,
slow replies, dropped connections and garbage bodies. The photo table says what each photo is (ok,
no_location, geo_not_public, not_found, permission_denied). Calls are counted per photo and served
as JSON at GET /_stats, so a test in another process can check who was called how often.

Standard library plus oauthlib (which flickrapi already pulls in); binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from oauthlib.oauth1.rfc5849 import signature as oauth_sig

REST_PATH = "/services/rest/"
PLACE_LEVELS = ("neighbourhood", "locality", "county", "region", "country")
BEHAVIOURS = ("ok", "no_location", "geo_not_public", "not_found", "permission_denied")
FAULTS = ("429", "500", "502", "503", "105", "201", "slow", "drop", "garbage", "no_message")

#: Flickr's own error codes and messages (flickr.reflection dump of getLocation, and real replies).
ERRORS = {
    1: "Photo not found",
    2: "Photo has no location information.",
    96: "Invalid signature",
    97: "Missing signature",
    99: "Insufficient permissions. Method requires read privileges; none granted.",
    100: "Invalid API Key (Key has invalid format)",
    105: "Service currently unavailable",
    111: 'Format "{}" not found',
    112: 'Method "{}" not found',
    201: "Sorry, the Flickr API service is not currently available.",
}
_BEHAVIOUR_CODE = {"not_found": 1, "no_location": 2, "geo_not_public": 2, "permission_denied": 99}
_HTML_429 = b"<html><body><h1>429 Too Many Requests</h1>You have sent too many requests.</body></html>"


def load_photo_table(path: str) -> dict[str, dict]:
    """Photo table from JSON Lines: one object per photo with `id` and `behaviour` (+ lat, lon, ...)."""
    photos = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                photos[str(row["id"])] = row
    return photos


class StandinState:
    """What the server knows and counts; shared by its handler threads under one lock."""

    def __init__(
        self,
        photos: dict[str, dict],
        api_key: str,
        api_secret: str,
        latency: float = 0.0,
        faults: list[str] | None = None,
        fault_rate: float = 0.0,
        seed: int = 0,
        key_state: str = "ok",
        slow_seconds: float = 5.0,
    ) -> None:
        self.photos = {str(k): dict(v) for k, v in photos.items()}
        self.api_key = api_key
        self.api_secret = api_secret
        self.latency = latency
        self.faults: deque[str] = deque(faults or [])
        self.photo_faults = {pid: deque(p.get("faults") or []) for pid, p in self.photos.items()}
        self.fault_rate = fault_rate
        self.rng = random.Random(seed)
        self.key_state = key_state  # ok | invalid (code 100) | down (105 on every call)
        self.slow_seconds = slow_seconds
        self.lock = threading.Lock()
        self.calls: Counter = Counter()  # photo id -> requests that named it
        self.answers: Counter = Counter()  # photo id -> photo-level answers delivered (stat ok or 1/2/99)
        self.outcomes: Counter = Counter()
        self.requests = 0
        self.times: list[float] = []  # monotonic arrival time of every request

    def next_fault(self, photo_id: str) -> str | None:
        with self.lock:
            self.requests += 1
            self.times.append(time.monotonic())
            if photo_id:
                self.calls[photo_id] += 1
            if self.faults:
                return self.faults.popleft()
            queue = self.photo_faults.get(photo_id)
            if queue:
                return queue.popleft()
            if self.fault_rate and self.rng.random() < self.fault_rate:
                return self.rng.choice(("429", "500", "105", "201", "drop", "garbage"))
        return None

    def record(self, photo_id: str, outcome: str, answered: bool) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if answered and photo_id:
                self.answers[photo_id] += 1

    def stats(self) -> dict:
        with self.lock:
            return {
                "requests": self.requests,
                "calls": dict(self.calls),
                "answers": dict(self.answers),
                "outcomes": dict(self.outcomes),
            }


def _oauth_params(header: str) -> dict[str, str]:
    if not header.startswith("OAuth "):
        return {}
    out = {}
    for part in header[6:].split(","):
        name, _, value = part.strip().partition("=")
        out[name] = unquote(value.strip('"'))
    return out


def check_signature(method: str, url: str, body: str, query: str, header: str, secret: str) -> bool:
    """True when the HMAC-SHA1 OAuth1 signature matches the request (no user token: empty token secret)."""
    given = _oauth_params(header).get("oauth_signature")
    if not given:
        return False
    params = oauth_sig.collect_parameters(
        uri_query=query, body=body, headers={"Authorization": header}, exclude_oauth_signature=True
    )
    base = oauth_sig.signature_base_string(
        method, oauth_sig.base_string_uri(url), oauth_sig.normalize_parameters(params)
    )
    key = f"{oauth_sig.utils.escape(secret)}&".encode()  # no user token: empty token secret
    expected = base64.b64encode(hmac.new(key, base.encode(), hashlib.sha1).digest()).decode()
    return oauth_sig.safe_string_equals(expected, given)


def _place_json(name: str, old: bool, idx: int) -> dict:
    if old:
        return {"_content": name, "place_id": f"pl{idx:06d}", "woeid": str(2_000_000 + idx)}
    return {"_content": name}


def location_json(photo: dict) -> dict:
    """The `photo` object of a getLocation reply; modern shape (strings) unless photo['shape'] == 'old'."""
    old = photo.get("shape") == "old"
    num = (lambda v: v) if old else str
    loc: dict = {
        "latitude": num(round(float(photo["lat"]), 6)),
        "longitude": num(round(float(photo["lon"]), 6)),
        "accuracy": num(int(photo.get("accuracy", 16))),
        "context": num(int(photo.get("context", 0))),
    }
    for i, level in enumerate(PLACE_LEVELS):
        name = (photo.get("places") or {}).get(level)
        if name is not None:
            loc[level] = _place_json(name, old, i)
    return {"id": str(photo["id"]), "location": loc}


def location_xml(photo: dict) -> str:
    loc = location_json(photo)["location"]
    attrs = " ".join(f"{k}={_attr(str(loc[k]))}" for k in ("latitude", "longitude", "accuracy", "context"))
    places = "".join(
        f"<{level}>{_xml_text(loc[level]['_content'])}</{level}>"
        if loc[level]["_content"]
        else f"<{level} />"
        for level in PLACE_LEVELS
        if level in loc
    )
    return f'<photo id="{photo["id"]}"><location {attrs}>{places}</location></photo>'


def _attr(value: object) -> str:
    """An XML attribute value in double quotes, with &quot; as Flickr writes it."""
    return '"' + escape(str(value), {'"': "&quot;"}) + '"'


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Handler(BaseHTTPRequestHandler):
    server_version = "flickr-standin/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet: tests and the demo own stdout/stderr
        return

    @property
    def state(self) -> StandinState:
        return self.server.state  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/_stats":
            self._send(200, "application/json", json.dumps(self.state.stats()).encode())
            return
        self._rest("GET", path, "", query)

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        self._rest("POST", path, body, query)

    def _send(self, status: int, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _rest(self, method: str, path: str, body: str, query: str) -> None:
        if path != REST_PATH:
            self._send(404, "text/html", b"<html><body>Not Found</body></html>")
            return
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        fmt = params.get("format", "rest")
        photo_id = params.get("photo_id", "")
        st = self.state
        fault = st.next_fault(photo_id)
        if st.latency:
            time.sleep(st.latency)
        if fault is not None and self._fault(fault, fmt, params, photo_id):
            return
        header = self.headers.get("Authorization", "")
        oauth = _oauth_params(header)
        key = oauth.get("oauth_consumer_key") or params.get("api_key")
        if not key or key != st.api_key or st.key_state == "invalid":
            return self._fail(fmt, params, photo_id, 100)
        if oauth:
            url = f"http://{self.headers.get('Host', '127.0.0.1')}{path}"
            if not check_signature(method, url, body, query, header, st.api_secret):
                return self._fail(fmt, params, photo_id, 96)
        if st.key_state == "down":
            return self._fail(fmt, params, photo_id, 105)
        if fmt not in ("json", "rest"):
            return self._fail(fmt, params, photo_id, 111, fmt)
        if params.get("method") != "flickr.photos.geo.getLocation":
            return self._fail(fmt, params, photo_id, 112, params.get("method", ""))
        photo = st.photos.get(photo_id)
        behaviour = photo.get("behaviour", "ok") if photo else "not_found"
        if behaviour != "ok":
            return self._fail(fmt, params, photo_id, _BEHAVIOUR_CODE[behaviour], answered=True)
        st.record(photo_id, "ok", answered=True)
        if fmt == "json":
            self._json(params, {"photo": location_json(photo), "stat": "ok"})
        else:
            self._xml(f'<rsp stat="ok">\n{location_xml(photo)}\n</rsp>')

    def _fault(self, fault: str, fmt: str, params: dict, photo_id: str) -> bool:
        """Serve an injected fault; False when the fault only delays (slow) and the call goes on."""
        st = self.state
        st.record(photo_id, f"fault_{fault}", answered=False)
        if fault == "slow":
            time.sleep(st.slow_seconds)
            return False
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return True
        if fault in ("429", "500", "502", "503"):
            self.close_connection = fault != "429"
            self._send(
                int(fault), "text/html; charset=utf-8", _HTML_429 if fault == "429" else b"<h1>Error</h1>"
            )
            return True
        if fault in ("105", "201"):
            self._fail(fmt, params, photo_id, int(fault), count=False)
            return True
        if fault == "garbage":
            self._send(200, "text/javascript; charset=utf-8", b'{"photo":{"id":"' + photo_id.encode()[:4])
            return True
        if fault == "no_message":  # stat=fail without a message: flickrapi raises KeyError on it
            self._send(200, "text/javascript; charset=utf-8", b'{"stat":"fail","code":105}')
            return True
        return False

    def _fail(
        self, fmt: str, params: dict, photo_id: str, code: int, arg: str = "", answered: bool = False,
        count: bool = True,
    ) -> None:  # fmt: skip
        message = ERRORS[code].format(arg)
        if count:
            self.state.record(photo_id, f"code_{code}", answered=answered)
        if fmt == "json":
            self._json(params, {"stat": "fail", "code": code, "message": message})
        else:
            self._xml(f'<rsp stat="fail">\n\t<err code="{code}" msg={_attr(message)} />\n</rsp>')

    def _json(self, params: dict, obj: dict) -> None:
        text = json.dumps(obj, separators=(",", ":"))
        if params.get("nojsoncallback") != "1":
            text = f"{params.get('jsoncallback') or 'jsonFlickrApi'}({text})"
        self._send(200, "text/javascript; charset=utf-8", text.encode())

    def _xml(self, inner: str) -> None:
        data = f'<?xml version="1.0" encoding="utf-8" ?>\n{inner}\n'.encode()
        self._send(200, "text/xml; charset=utf-8", data)


class FlickrStandin:
    """The stand-in server on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(
        self, photos: dict[str, dict], api_key: str, api_secret: str, port: int = 0, **kwargs
    ) -> None:
        self.state = StandinState(photos, api_key, api_secret, **kwargs)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.state = self.state  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="flickr-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{REST_PATH}"

    def start(self) -> FlickrStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FlickrStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve a photo table until interrupted; the key and secret come from FLICKR_API_KEY / FLICKR_API_SECRET."""
    import argparse
    import os
    import sys

    p = argparse.ArgumentParser(
        description="Local stand-in for Flickr's REST API (flickr.photos.geo.getLocation)"
    )
    p.add_argument(
        "--photos", required=True, help="photo table (JSON Lines, e.g. synth-imagenet's photos.jsonl)"
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before every reply")
    p.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of calls answered with a random fault"
    )
    args = p.parse_args(argv)
    key, secret = os.environ.get("FLICKR_API_KEY"), os.environ.get("FLICKR_API_SECRET")
    if not key or not secret:
        print(
            "flickr-standin: error: set FLICKR_API_KEY and FLICKR_API_SECRET (what the server accepts)",
            file=sys.stderr,
        )
        sys.exit(2)
    server = FlickrStandin(load_photo_table(args.photos), key, secret, port=args.port, latency=args.latency,
                           fault_rate=args.fault_rate)  # fmt: skip
    print(
        f"flickr-standin: serving {len(server.state.photos)} photos at {server.url} (Ctrl-C stops)",
        flush=True,
    )
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()


if __name__ == "__main__":
    main()
