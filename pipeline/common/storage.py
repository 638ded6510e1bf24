"""Storage options for every command: endpoint, credentials profile, region, anonymous access, and any
other fsspec option, given once (flags or environment) and applied to every read, write and stream.

Sources, lowest to highest precedence (nested dicts such as s3's client_kwargs are merged key by key):

1. fsspec's own configuration (`FSSPEC_S3='{"client_kwargs": {...}}'`, `FSSPEC_S3_ANON=true`, ...);
2. `GEO_SSL_STORAGE_OPTIONS`: a JSON object of fsspec options. A flat object is for s3; an object
   keyed by protocol (`{"s3": {...}, "gcs": {...}}`) sets each protocol's own;
3. `GEO_SSL_STORAGE_ENDPOINT`, `GEO_SSL_STORAGE_PROFILE`, `GEO_SSL_STORAGE_REGION`, `GEO_SSL_STORAGE_ANON`;
4. the flag `--storage-options JSON` (same forms as 2), then `--storage-endpoint`, `--storage-profile`,
   `--storage-region`, `--storage-anon` / `--no-storage-anon`.

The convenience settings map per protocol: for s3 endpoint -> client_kwargs.endpoint_url, region ->
client_kwargs.region_name, profile -> profile, anon -> anon; for gcs endpoint -> endpoint_url and
anon -> token="anon"; for az/abfs anon -> anon. Local paths never get options.

`configure_from_args` writes the merged settings back into the `GEO_SSL_STORAGE_*` environment
variables, so that worker processes (spawned pools, Dask LocalCluster workers, DataLoader workers,
torchrun ranks) resolve the same options. Values of secret-looking options (key, secret, token,
password, ...) and the user part of an endpoint URL are replaced by `***` in every message this
module produces; `redact` does the same for any text (the CLIs pass their error lines through it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
from typing import Any

from geo_ssl.pipeline.common.errors import GeoSSLError

ENV_OPTIONS = "GEO_SSL_STORAGE_OPTIONS"
ENV_ENDPOINT = "GEO_SSL_STORAGE_ENDPOINT"
ENV_PROFILE = "GEO_SSL_STORAGE_PROFILE"
ENV_REGION = "GEO_SSL_STORAGE_REGION"
ENV_ANON = "GEO_SSL_STORAGE_ANON"
_ENV = (ENV_OPTIONS, ENV_ENDPOINT, ENV_PROFILE, ENV_REGION, ENV_ANON)

_LOCAL = {"file", "local", "memory", "simplecache", "filecache", "blockcache"}
_S3 = {"s3", "s3a"}
_GCS = {"gcs", "gs"}
_AZ = {"az", "abfs", "abfss", "adl"}
_SECRET_KEY = re.compile(
    r"secret|token|password|passwd|credential|(^|_)key$|^key|sas|connection_string", re.I
)
_NOT_SECRET = {"anon", "google_default", "cloud", "browser", "cache"}  # gcsfs token modes, not tokens
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    """The storage flags of every command (default None: only flags given override the environment)."""
    g = parser.add_argument_group("object storage (also env GEO_SSL_STORAGE_*; see docs/storage.md)")
    g.add_argument("--storage-endpoint", default=None, metavar="URL",
                   help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO, Ceph, R2)")  # fmt: skip
    g.add_argument("--storage-profile", default=None, metavar="NAME",
                   help="credentials profile of ~/.aws/credentials or ~/.aws/config")  # fmt: skip
    g.add_argument("--storage-region", default=None, metavar="REGION", help="bucket region, e.g. eu-west-1")
    g.add_argument("--storage-anon", action=argparse.BooleanOptionalAction, default=None,
                   help="anonymous (unsigned) access to public buckets")  # fmt: skip
    g.add_argument("--storage-options", default=None, metavar="JSON",
                   help='any other fsspec options, e.g. \'{"requester_pays": true}\' (s3) or '
                        '\'{"gcs": {"project": "p"}}\'')  # fmt: skip


def _parse_json(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise GeoSSLError(f"{where}: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise GeoSSLError(f"{where}: must be a JSON object, got {type(value).__name__}")
    return value


def _parse_bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise GeoSSLError(f"{where}={text!r}: use true or false")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _protocols() -> set[str]:
    from fsspec.registry import known_implementations, registry

    return set(known_implementations) | set(registry)


def _per_protocol(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"s3": {...}, ...}: a flat object is s3's; an object whose keys are all protocols is per protocol."""
    if options and all(isinstance(v, dict) for v in options.values()) and set(options) <= _protocols():
        return options
    return {"s3": options} if options else {}


def current_settings() -> dict[str, Any]:
    """The user's settings from the environment: {"options", "endpoint", "profile", "region", "anon"}."""
    env = os.environ
    options = _parse_json(env[ENV_OPTIONS], ENV_OPTIONS) if env.get(ENV_OPTIONS, "").strip() else {}
    anon = _parse_bool(env[ENV_ANON], ENV_ANON) if env.get(ENV_ANON, "").strip() else None
    return {
        "options": _per_protocol(options),
        "endpoint": env.get(ENV_ENDPOINT) or None,
        "profile": env.get(ENV_PROFILE) or None,
        "region": env.get(ENV_REGION) or None,
        "anon": anon,
    }


def configure(
    *,
    endpoint: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    anon: bool | None = None,
    options: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lay these settings over the environment's and write the result back to GEO_SSL_STORAGE_*
    (so child processes see it); returns the merged settings (secrets included: do not print them)."""
    settings = current_settings()
    if options is not None:
        extra = _parse_json(options, "--storage-options") if isinstance(options, str) else options
        settings["options"] = _merge(settings["options"], _per_protocol(extra))
    if endpoint is not None:
        if not re.match(r"^[a-z][a-z0-9+.-]*://", endpoint, re.I):
            raise GeoSSLError(f"--storage-endpoint {endpoint!r}: give a URL such as http://host:9000")
        settings["endpoint"] = endpoint
    for name, value in (("profile", profile), ("region", region), ("anon", anon)):
        if value is not None:
            settings[name] = value
    _check_endpoints(settings, "--storage-endpoint" if endpoint is not None else ENV_ENDPOINT)
    _export(settings)
    return settings


_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#]*@", re.I)


def _check_endpoints(settings: dict[str, Any], endpoint_source: str) -> None:
    """Refuse an endpoint URL holding user:password@ (GeoSSLError, exit 2). botocore signs with the
    configured keys and aiohttp refuses a request with both, which would surface as "storage unreachable,
    rerun" (exit 3) on every attempt; the message shows the URL with its user part as ***."""
    options = settings["options"]
    s3_client = options.get("s3", {}).get("client_kwargs")
    s3_client = s3_client if isinstance(s3_client, dict) else {}
    found = [
        (endpoint_source, settings["endpoint"]),
        (f"--storage-options/{ENV_OPTIONS} client_kwargs.endpoint_url", s3_client.get("endpoint_url")),
        (f"--storage-options/{ENV_OPTIONS} gcs.endpoint_url", options.get("gcs", {}).get("endpoint_url")),
    ]
    for where, url in found:
        if isinstance(url, str) and _USERINFO.match(url):
            shown = _USERINFO.sub(r"\1***@", url)
            raise GeoSSLError(
                f"{where} {shown}: a user name or password in the endpoint URL is not supported; give the URL"
                " without it and the keys through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --storage-profile"
            )


def configure_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """configure() from the flags of add_storage_flags (absent flags leave the environment's value)."""
    return configure(
        endpoint=getattr(args, "storage_endpoint", None),
        profile=getattr(args, "storage_profile", None),
        region=getattr(args, "storage_region", None),
        anon=getattr(args, "storage_anon", None),
        options=getattr(args, "storage_options", None),
    )


def _export(settings: dict[str, Any]) -> None:
    env = os.environ
    for var, value in (
        (ENV_OPTIONS, json.dumps(settings["options"], sort_keys=True) if settings["options"] else None),
        (ENV_ENDPOINT, settings["endpoint"]),
        (ENV_PROFILE, settings["profile"]),
        (ENV_REGION, settings["region"]),
        (ENV_ANON, None if settings["anon"] is None else ("true" if settings["anon"] else "false")),
    ):
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value


def protocol_of(url: str) -> str:
    """'s3' for s3://b/k, 'file' for a local path (first protocol of a chained URL)."""
    from fsspec.core import split_protocol

    proto, _ = split_protocol(str(url).split("::")[-1] if "::" in str(url) else str(url))
    return proto or "file"


def _fsspec_conf(protocol: str) -> dict[str, Any]:
    import fsspec.config

    out: dict[str, Any] = {}
    for name in {protocol, *(_S3 if protocol in _S3 else ()), *(_GCS if protocol in _GCS else ())}:
        if isinstance(fsspec.config.conf.get(name), dict):
            out = _merge(out, fsspec.config.conf[name])
    return out


def options_for(url: str) -> dict[str, Any]:
    """The fsspec storage options for `url` ({} for local paths): fsspec's config, then the user's
    settings (GEO_SSL_STORAGE_*, which the command's flags were written into)."""
    protocol = protocol_of(url)
    if protocol in _LOCAL:
        return {}
    settings = current_settings()
    family = _S3 if protocol in _S3 else _GCS if protocol in _GCS else {protocol}
    out = _fsspec_conf(protocol)
    for name in sorted(family):
        out = _merge(out, settings["options"].get(name, {}))
    endpoint, profile, region, anon = (settings[k] for k in ("endpoint", "profile", "region", "anon"))
    if protocol in _S3:
        client: dict[str, Any] = {}
        if endpoint:
            client["endpoint_url"] = endpoint
        if region:
            client["region_name"] = region
        if client:
            out = _merge(out, {"client_kwargs": client})
        if profile:
            out["profile"] = profile
        if anon is not None:
            out["anon"] = anon
    elif protocol in _GCS:
        if endpoint:
            out["endpoint_url"] = endpoint
        if anon:
            out["token"] = "anon"
    elif protocol in _AZ and anon is not None:
        out["anon"] = anon
    if endpoint and protocol in _S3 | _GCS:
        out = _first_contact(out, endpoint, protocol in _S3)
    return out


def _first_contact(options: dict[str, Any], endpoint: str, s3: bool) -> dict[str, Any]:
    """Probe --storage-endpoint once (reach.py); where nothing listens, botocore tries once and the retry
    policy stops at the first refusal, so a wrong address fails in a second with one line."""
    from geo_ssl.pipeline.common.reach import probe

    dead = probe(endpoint) is not None
    return _merge(options, {"config_kwargs": {"retries": {"max_attempts": 1}}}) if dead and s3 else options


def _secrets(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _secrets(v, str(k))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secrets(v, key)]
    if isinstance(value, str) and len(value) >= 4 and _SECRET_KEY.search(key) and value not in _NOT_SECRET:
        return [value]
    return []


def secret_values() -> list[str]:
    """The secret strings of the current settings and of fsspec's config (longest first)."""
    import fsspec.config

    try:
        settings = current_settings()
    except GeoSSLError:
        settings = {"options": {}, "endpoint": None}
    found = _secrets(settings["options"]) + _secrets(dict(fsspec.config.conf))
    endpoint = settings.get("endpoint") or ""
    m = re.match(r"^[a-z][a-z0-9+.-]*://([^/@]+)@", endpoint, re.I)
    if m:
        found.append(m.group(1))
    return sorted(set(found), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every configured secret and any user:password@ of a URL replaced by ***."""
    for secret in secret_values():
        text = text.replace(secret, "***")
    return re.sub(r"(://)[^/@\s]+:[^/@\s]+@", r"\1***@", text)


def describe(settings: dict[str, Any] | None = None) -> str:
    """One line saying which storage settings are in effect, secrets shown as ***."""
    s = current_settings() if settings is None else settings
    parts = [f"{k}={s[k]}" for k in ("endpoint", "profile", "region", "anon") if s.get(k) is not None]
    if s.get("options"):
        parts.append("options=" + json.dumps(s["options"], sort_keys=True))
    return redact(", ".join(parts) or "defaults")
