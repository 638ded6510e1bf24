"""`synth-imagenet`: a small GeoImageNet world, deterministic by seed, for tests, the demo and benchmarks.

Writes under OUT:
- imagenet/{wnid}/{wnid}_{index}.JPEG: the ImageNet tree (a few bad files: truncated, PNG bytes);
- fall11_urls.txt: the URL list in the real format, cycling through every Flickr URL form, plus junk
  (malformed lines, non-Flickr hosts, a bad key, Latin-1 bytes, blank lines, one photo backing two keys);
- yfcc100m.tsv: a YFCC100M-style dump (25 columns, longitude before latitude) covering part of the photos;
- photos.jsonl: the stand-in's photo table (behaviour, coordinates, place names, reply shape);
- words.txt: wnid<TAB>name of the classes used.
Class names come from a words.txt given with --words (ImageNet's), else from a built-in list.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, ImageDraw

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.checks import check_seed
from geo_ssl.pipeline.common.errors import GeoSSLError

#: The first ILSVRC-2012 classes (wnid, name); enough for small synthetic sets.
BUILTIN_CLASSES = [
    ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"), ("n01494475", "hammerhead"), ("n01496331", "electric ray"),
    ("n01498041", "stingray"), ("n01514668", "cock"), ("n01514859", "hen"), ("n01518878", "ostrich"),
    ("n01530575", "brambling"), ("n01531178", "goldfinch"), ("n01532829", "house finch"),
    ("n01534433", "junco"), ("n01537544", "indigo bunting"), ("n01558993", "robin"),
]  # fmt: skip
#: Places photos are taken around (lat, lon, name, country); each class favours a few of them.
CITIES = [
    (48.8566, 2.3522, "Paris", "France"), (40.7128, -74.006, "New York", "United States"),
    (35.6762, 139.6503, "Tokyo", "Japan"), (-33.8688, 151.2093, "Sydney", "Australia"),
    (-22.9068, -43.1729, "Rio de Janeiro", "Brazil"), (51.5074, -0.1278, "London", "UK"),
    (-1.2921, 36.8219, "Nairobi", "Kenya"), (55.7558, 37.6173, "Moscow", "Russia"),
    (19.4326, -99.1332, "Mexico City", "Mexico"), (1.3521, 103.8198, "Singapore", "Singapore"),
    (64.1466, -21.9426, "Reykjavik", "Iceland"), (-54.8019, -68.303, "Ushuaia", "Argentina"),
]  # fmt: skip
URL_FORMS = [
    "http://farm{farm}.static.flickr.com/{server}/{pid}_{secret}.jpg",
    "http://farm{farm}.static.flickr.com/{server}/{pid}_{secret}_m.jpg",
    "http://static.flickr.com/{server}/{pid}_{secret}.jpg",
    "https://farm{farm}.staticflickr.com/{server}/{pid}_{secret}_b.jpg",
    "https://c{farm}.staticflickr.com/{farm}/{server}/{pid}_{secret}_z.jpg",
    "https://live.staticflickr.com/{server}/{pid}_{secret}_k.jpg",
    "http://photos{farm}.flickr.com/{pid}_{secret}_b.jpg",
    "http://farm{farm}.static.flickr.com/{server}/{pid}_{secret}.jpg?v=0",
    "https://www.flickr.com/photos/user{farm}/{pid}",
]
BEHAVIOURS = (["ok"] * 14) + [
    "no_location",
    "no_location",
    "geo_not_public",
    "not_found",
    "permission_denied",
]


def read_words(path: str | None) -> dict[str, str]:
    """wnid -> first name from an ImageNet words.txt (wnid<TAB>names); {} when no path is given."""
    if path is None:
        return {}
    out = {}
    for line in fsio.read_bytes(path).decode("utf-8", "replace").splitlines():
        wnid, _, names = line.partition("\t")
        if wnid and names:
            out[wnid.strip()] = names.split(",")[0].strip()
    return out


def _image(rng: np.random.Generator, cls: int, size: int = 96) -> bytes:
    """A class-specific shape and colour on a noisy background, so a classifier has something to learn."""
    hue = (cls * 47) % 255
    bg = rng.integers(40, 200, 3)
    img = Image.new("RGB", (size + int(rng.integers(0, 32)), size), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(img)
    colour = (hue, 255 - hue, (hue * 3) % 255)
    x, y = (int(v) for v in rng.integers(8, 40, 2))
    shape = cls % 4
    box = (x, y, x + 40, y + 40)
    [draw.ellipse, draw.rectangle, lambda b, fill: draw.polygon([(b[0], b[3]), (b[2], b[3]), (b[0] + 20, b[1])], fill=fill),
     lambda b, fill: draw.line(b, fill=fill, width=8)][shape](box, fill=colour)  # fmt: skip
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (img.height, img.width, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def synth_imagenet(
    out: str, classes: int = 8, per_class: int = 24, seed: int = 0, words: str | None = None
) -> dict:
    """Write the synthetic world under OUT; returns paths and counts (and a one-line summary)."""
    if not 1 <= classes <= len(BUILTIN_CLASSES):
        raise GeoSSLError(f"--classes must be between 1 and {len(BUILTIN_CLASSES)}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise GeoSSLError(f"--images-per-class must be an integer of at least 1, got {per_class!r}")
    check_seed(seed)
    rng = np.random.default_rng(seed)
    names = read_words(words)
    chosen = [(w, names.get(w, n)) for w, n in BUILTIN_CLASSES[:classes]]
    tree = fsio.join(out, "imagenet")
    url_lines: list[bytes] = []
    photos: list[dict] = []
    yfcc_lines: list[str] = []
    n_images = bad = 0
    next_pid = 10_000_000 + int(rng.integers(0, 1_000_000))
    # every behaviour present from 22 images on; the bad image files (class 0, images 5-7) sit behind located photos
    bad_slots = [5, 6, 7] if per_class > 7 else []
    plan = list(rng.permutation(np.resize(np.array(BEHAVIOURS), classes * per_class - len(bad_slots))))
    for slot in bad_slots:
        plan.insert(slot, "ok")
    for c, (wnid, _) in enumerate(chosen):
        fsio.makedirs(fsio.join(tree, wnid))
        home = [int(v) for v in rng.choice(len(CITIES), size=2, replace=False)]
        for j in range(per_class):
            index = 100 + j * 7
            pid = next_pid
            next_pid += int(rng.integers(1, 5000))
            behaviour = str(plan[c * per_class + j])
            form = URL_FORMS[(c * per_class + j) % len(URL_FORMS)]
            url = form.format(
                farm=1 + pid % 9,
                server=1000 + pid % 7000,
                pid=pid,
                secret=f"{pid * 2654435761 % 16**10:010x}",
            )
            url_lines.append(f"{wnid}_{index}\t{url}\n".encode())
            city = CITIES[home[j % 2] if rng.random() < 0.8 else int(rng.integers(0, len(CITIES)))]
            lat = float(np.clip(city[0] + rng.normal(0, 1.5), -89.9, 89.9))
            lon = float((city[1] + rng.normal(0, 1.5) + 180) % 360 - 180)
            row = {"id": str(pid), "behaviour": behaviour}
            if behaviour == "ok":
                places = {"locality": city[2], "region": f"{city[2]} region", "country": city[3]}
                if j % 3 == 0:
                    places.pop("region")  # missing place level
                if j % 4 == 0:
                    places["neighbourhood"] = ""
                row.update(lat=round(lat, 6), lon=round(lon, 6), accuracy=int(rng.integers(3, 17)), context=0,
                           places=places, shape="old" if j % 5 == 0 else "modern")  # fmt: skip
                if rng.random() < 0.35:  # in YFCC100M too: longitude before latitude
                    cols = [str(len(yfcc_lines)), str(pid), f"{pid:x}", "12345@N00", "someone", "2010-05-01 12:00:00.0",
                            "1272715200", "Canon", "title", "desc", "tag", "", f"{lon:.6f}", f"{lat:.6f}",
                            str(row["accuracy"]), f"http://www.flickr.com/photos/someone/{pid}/", url, "CC BY",
                            "http://creativecommons.org/licenses/by/2.0/", "1000", "1", "abc", "def", "jpg", "0"]  # fmt: skip
                    yfcc_lines.append("\t".join(cols))
            photos.append(row)
            path = fsio.join(tree, wnid, f"{wnid}_{index}.JPEG")
            data = _image(rng, c)
            if j == 5 and c == 0:
                data = data[: len(data) // 2]  # truncated
                bad += 1
            elif j == 6 and c == 0:
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "PNG")
                data = buf.getvalue()  # not a JPEG
                bad += 1
            if not (j == 7 and c == 0):  # one listed image is missing from the tree
                fsio.atomic_write_bytes(path, data)
                n_images += 1
    # a photo backing a second key in another class, and junk lines of every kind
    first_pid = photos[0]["id"]
    url_lines.append(
        f"{chosen[-1][0]}_99999\thttps://live.staticflickr.com/65535/{first_pid}_abcdef_b.jpg\n".encode()
    )
    fsio.atomic_write_bytes(
        fsio.join(tree, chosen[-1][0], f"{chosen[-1][0]}_99999.JPEG"), _image(rng, classes - 1)
    )
    n_images += 1
    url_lines += [
        b"\n",
        b"this line has no tab\n",
        b"n9999_bad\thttp://farm1.static.flickr.com/2/1_ab.jpg\n",
        f"{chosen[0][0]}_90001\thttp://images.fineartamerica.com/images-medium/fish.jpg\n".encode(),
        f"{chosen[0][0]}_90002\thttp://upload.wikimedia.org/wikipedia/commons/a/ab/x.jpg\n".encode(),
        f"{chosen[0][0]}_90003\thttp://caf".encode() + b"\xe9.example.com/\xe9t\xe9.jpg\n",
        f"{chosen[0][0]}_90004\thttp://www.flickr.com/photos/someone/\n".encode(),
    ]
    yfcc_lines.append("\t".join(["99999", "123", "h"] + [""] * 22))  # a photo ImageNet does not have
    fsio.atomic_write_bytes(fsio.join(out, "fall11_urls.txt"), b"".join(url_lines))
    fsio.atomic_write_text(fsio.join(out, "yfcc100m.tsv"), "\n".join(yfcc_lines) + "\n")
    fsio.atomic_write_text(fsio.join(out, "photos.jsonl"), "".join(json.dumps(p) + "\n" for p in photos))
    fsio.atomic_write_text(fsio.join(out, "words.txt"), "".join(f"{w}\t{n}\n" for w, n in chosen))
    listed = classes * per_class + 1
    return {
        "root": tree,
        "urls": fsio.join(out, "fall11_urls.txt"),
        "yfcc": fsio.join(out, "yfcc100m.tsv"),
        "photos": fsio.join(out, "photos.jsonl"),
        "words": fsio.join(out, "words.txt"),
        "images": n_images,
        "url_lines": len(url_lines),
        "yfcc_rows": len(yfcc_lines),
        "line": (
            f"synth-imagenet: {listed} images in = {n_images} written + 0 rejected + {listed - n_images} skipped [ok]"
            f" | {classes} classes, {len(url_lines)} URL lines, {len(yfcc_lines)} YFCC rows, {bad} bad image files"
        ),
    }
