"""The Flickr key and secret: where they come from, and the scrubber that keeps them out of every output."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from geo_ssl.pipeline.common.errors import GeoSSLError

ENV_KEY = "FLICKR_API_KEY"
ENV_SECRET = "FLICKR_API_SECRET"


@dataclass(frozen=True)
class Credentials:
    """A key and its secret. repr() never shows them (a traceback or a log line cannot leak them)."""

    api_key: str
    api_secret: str

    def __repr__(self) -> str:
        return "Credentials(api_key=***, api_secret=***)"

    __str__ = __repr__

    def scrub(self, text: object) -> str:
        """`text` with the key and the secret replaced by *** (for error messages and tables)."""
        out = str(text)
        for secret in (self.api_key, self.api_secret):
            if secret:
                out = out.replace(secret, "***")
        return out


def _parse_file(text: str, path: str) -> dict[str, str]:
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise GeoSSLError(f"{path}: credentials file is not valid JSON") from None
        return {"key": str(data.get("api_key", "")), "secret": str(data.get("api_secret", ""))}
    values: dict[str, str] = {}
    plain = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if eq:
            values[name.strip().upper()] = value.strip().strip("'\"")
        else:
            plain.append(line)
    if plain and not values:
        return {"key": plain[0], "secret": plain[1] if len(plain) > 1 else ""}
    key = values.get(ENV_KEY) or values.get("API_KEY", "")
    return {"key": key, "secret": values.get(ENV_SECRET) or values.get("API_SECRET", "")}


def load_credentials(path: str | None = None) -> Credentials:
    """From --credentials FILE (JSON, KEY=VALUE lines or two plain lines), else the environment."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                found = _parse_file(f.read(), path)
        except FileNotFoundError:
            raise GeoSSLError(f"--credentials {path}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GeoSSLError(f"--credentials {path}: cannot read it ({type(exc).__name__})") from None
        where = f"--credentials {path}"
    else:
        found = {"key": os.environ.get(ENV_KEY, ""), "secret": os.environ.get(ENV_SECRET, "")}
        where = f"{ENV_KEY} / {ENV_SECRET}"
    key, secret = found["key"].strip(), found["secret"].strip()
    if not key or not secret:
        missing = "key" if not key else "secret"
        raise GeoSSLError(
            f"no Flickr API {missing} in {where}: set {ENV_KEY} and {ENV_SECRET} or pass --credentials FILE"
        )
    if not key.isascii() or not secret.isascii() or any(c.isspace() for c in key + secret):
        raise GeoSSLError(f"{where}: the Flickr key and secret must be ASCII without spaces")
    return Credentials(key, secret)
