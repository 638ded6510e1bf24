"""Reading and writing weight files: torch checkpoints and safetensors, told apart by their first bytes.

Why sniff first: `torch.load` on a text file fails deep in the unpickler (`KeyError: 101`), and on random
bytes it suggests retrying with `weights_only=False`, an unsafe hint for a damaged file. Looking at the
magic bytes first turns both into "X is not a checkpoint (...)", and a file is only ever unpickled when it
looks like a torch file. This module imports torch only when it has to load or save tensors, so that
`geo-export` refuses a bad input or output in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from typing import TYPE_CHECKING, Any

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io

if TYPE_CHECKING:
    import torch

#: torch.save's legacy (non-zip) format, used before torch 1.6 (official MoCo and GASSL releases may be in
#: it): a pickle (PROTO opcode 0x80) whose first object is the LONG1 magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGIC = b"PK\x03\x04"
#: Formats geo-export writes, with the suffix each gets by default.
FORMATS = {"safetensors": ".safetensors", "pth": ".pth"}
_KNOWN = "a torch zip or legacy checkpoint, or a safetensors file"


def sniff(head: bytes, size: int) -> str | None:
    """'torch', 'safetensors' or None (not a weight file) from the first 32 bytes and the file size."""
    if head.startswith(_ZIP_MAGIC) or (head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= size - 8:
            return "safetensors"
    return None


def _describe(head: bytes, size: int) -> str:
    """Why a file is not a weight file, in a few words for the error line."""
    if size == 0:
        return "empty file"
    text = None
    for cut in (0, 1, 2, 3):  # the sample may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"text, starting {first!r}; expected {_KNOWN}"
    return f"{size} bytes of unknown binary data starting {head[:4].hex()}; expected {_KNOWN}"


def _not_a_checkpoint(url: str, why: str) -> GeoSSLError:
    return GeoSSLError(f"{url} is not a checkpoint ({why})")


def read_weights(url: str, trusted: bool = False) -> tuple[dict[str, Any], str]:
    """(content, format) of a checkpoint or safetensors file; one-line GeoSSLError for anything else.

    `trusted` loads torch files with weights_only=False (arbitrary objects; only files you trust).
    A safetensors file comes back as its tensors plus, under `__metadata__`, its string metadata.
    """
    fs, path = fsio.get_fs(url)
    # an unreachable store raises retry.StorageError (exit 3), missing credentials one (exit 2)
    if not retry_io(lambda: fs.exists(path), f"reading {url}"):
        raise GeoSSLError(f"{url}: checkpoint not found")
    if retry_io(lambda: fs.isdir(path), f"reading {url}"):
        raise GeoSSLError(f"{url} is a directory, not a checkpoint file")
    try:
        data = fsio.read_bytes(url)
    except OSError as exc:
        raise GeoSSLError(f"{url}: cannot read ({exc.strerror or exc})") from None
    kind = sniff(data[:32], len(data))
    if kind is None:
        raise _not_a_checkpoint(url, _describe(data[:256], len(data)))
    if kind == "safetensors":
        return _read_safetensors(url, data), kind
    return _read_torch(url, data, trusted), kind


def _read_safetensors(url: str, data: bytes) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors: dict[str, Any] = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError) as exc:
        raise _not_a_checkpoint(url, f"damaged safetensors file: {_first_line(exc)}") from None
    tensors["__metadata__"] = dict(header.get("__metadata__") or {})
    return tensors


def _read_torch(url: str, data: bytes, trusted: bool) -> dict[str, Any]:
    import io

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says it
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # torch raises many types for damaged archives; each means "unreadable"
        message = str(exc)
        legacy_protocol = data[1] if not data.startswith(_ZIP_MAGIC) else 2
        if legacy_protocol > 2 and not trusted:
            raise GeoSSLError(
                f"{url}: a pre-1.6 torch file in pickle protocol {legacy_protocol}, which weights-only "
                "loading cannot read; if you trust the file, pass --trust"
            ) from None
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if unsupported and not trusted:
            raise GeoSSLError(
                f"{url}: a torch checkpoint that holds objects other than tensors ({unsupported.group(1)}); "
                "if you trust the file, pass --trust"
            ) from None
        raise _not_a_checkpoint(url, f"damaged torch file: {_torch_reason(exc)}") from None
    if not isinstance(obj, dict):
        raise _not_a_checkpoint(url, f"a torch file holding a {type(obj).__name__}, not a dict of weights")
    return obj


def _torch_reason(exc: BaseException) -> str:
    """The cause inside torch's message, without its advice to retry with weights_only=False."""
    message = str(exc)
    _, found, after = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (after if found else message).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    reason = reason.split(". ")[0].rstrip(".")  # first sentence only
    if "weights_only" in reason:  # never pass on the unsafe hint
        reason = type(exc).__name__
    return reason[:160]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def check_destination(url: str) -> None:
    """Refuse an output path that exists and is not a regular file (folder, fifo, device, socket).

    A regular file is fine: outputs replace it atomically (temp file + rename), never in place.
    Object-store URLs are not checked (keys are always plain objects).
    """
    if not fsio.is_local(url):
        return
    path = fsio.get_fs(url)[1]
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:  # a dangling symlink or an unreadable entry
            raise GeoSSLError(f"{url}: cannot write here ({exc.strerror})") from None
        if not stat.S_ISREG(mode):
            raise GeoSSLError(f"{url} exists and is a {_kind(mode)}, not a regular file; choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise GeoSSLError(f"{url}: {parent} is not a folder")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def encode_weights(tensors: dict[str, torch.Tensor], fmt: str, metadata: dict[str, str]) -> bytes:
    """The bytes of a weight file: safetensors (with string metadata) or a torch .pth state_dict."""
    import io

    import torch

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(flat, metadata=metadata)
    if fmt == "pth":
        buf = io.BytesIO()
        torch.save(flat, buf)
        return buf.getvalue()
    raise GeoSSLError(f"unknown weight format {fmt!r}; choose one of {', '.join(FORMATS)}")
