"""Pixels of synthetic fMoW views, built so that self-supervised learning has something to find.

Three sources of variation, each tied to what it should be tied to:
- the object: every one of the 62 categories has its own drawing recipe (rings, grids, strips, blob
  clusters ...) inside the bounding box; its layout is seeded by the location, so all views agree;
- the terrain: colour palette, multi-scale texture, field parcels and roads, seeded by the location and
  sampled in ground coordinates, so views with shifted footprints show the same ground;
- the acquisition: season, sun, haze, clouds, sensor tint and noise, seeded by the view.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from geo_ssl.pipeline.fmow.layout import CATEGORIES

RGB = tuple[int, int, int]

#: Terrain palettes per biome: (bare soil, vegetation, dark accent), 8-bit RGB.
BIOMES: dict[str, tuple[RGB, RGB, RGB]] = {
    "temperate": ((150, 140, 115), (85, 120, 65), (50, 70, 45)),
    "mediterranean": ((180, 160, 125), (110, 125, 75), (80, 85, 60)),
    "arid": ((205, 180, 140), (160, 145, 105), (140, 110, 80)),
    "tropical": ((140, 115, 85), (55, 105, 50), (30, 65, 35)),
    "boreal": ((125, 120, 105), (60, 90, 60), (35, 50, 40)),
    "steppe": ((175, 160, 120), (140, 145, 90), (110, 105, 80)),
    "urban": ((150, 148, 145), (105, 120, 90), (85, 85, 90)),
    "tundra": ((150, 145, 135), (120, 125, 100), (90, 90, 85)),
}
#: Terrain lattices cover [-EXTENT, EXTENT]^2 in units of the location's reference footprint side.
EXTENT = 4.0
#: Cell size of each terrain octave (footprint units) and its weight.
_OCTAVES = ((0.6, 1.0), (0.2, 0.55), (0.07, 0.3), (0.025, 0.16))
#: Terrain is computed at half size or at most this many px per side, then upsampled (it is smooth).
_TERRAIN_MAX_SIDE = 640
_STRIP_ROWS = 512

ASPHALT: RGB = (72, 72, 76)
CONCRETE: RGB = (188, 185, 176)
WHITE: RGB = (236, 236, 230)
WATER: RGB = (38, 68, 105)
GRASS: RGB = (85, 135, 62)
DARKGREEN: RGB = (38, 78, 40)
SAND: RGB = (212, 192, 142)
RED: RGB = (172, 52, 42)
BROWN: RGB = (122, 92, 62)
ROOF: RGB = (150, 150, 156)
SHADOW: RGB = (32, 34, 40)
CYAN: RGB = (62, 182, 212)
YELLOW: RGB = (222, 192, 62)
BLUE: RGB = (52, 82, 162)
OLIVE: RGB = (102, 106, 72)
RUST: RGB = (152, 92, 62)
BRIGHT: tuple[RGB, ...] = (
    (200, 40, 40),
    (230, 200, 40),
    (40, 90, 200),
    (40, 160, 80),
    (220, 120, 30),
    (240, 240, 240),
)


@dataclass(frozen=True)
class TerrainStyle:
    """What a location's ground looks like, independent of when it is seen."""

    palette: np.ndarray  # (3, 3) soil, vegetation, accent in [0, 1]
    lattices: tuple[Image.Image, ...]  # height-field octaves, then moisture octaves (float 'F' squares)
    parcels: tuple[float, float, np.ndarray] | None  # (angle, cell size, random values 16x16)
    roads: tuple[tuple[float, float, float, RGB], ...]  # (angle, offset units, width m, colour)
    object_colour: np.ndarray  # (3, 3) per-location colour matrix of the object (hue, saturation, gain)
    object_frame: tuple[float, float, float]  # (scale, u offset, v offset) of the drawing inside the box
    object_seed: tuple[int, ...]  # seeds the object layout; the same for every view


@dataclass(frozen=True)
class Look:
    """How one acquisition changes the scene: season, light, atmosphere, sensor."""

    gain: np.ndarray  # (3,) season x sensor x illumination channel gains
    snow: float  # 0..1 blend of the terrain towards snow
    haze: float  # 0..1 blend towards the haze colour
    cloud_cover: float  # 0..1 share of the image under cloud
    noise: float  # per-pixel sensor noise (DN)
    texture: float  # fine ground texture amplitude (DN)
    sun_azimuth: float  # degrees from north, clockwise
    sun_elevation: float  # degrees


@dataclass(frozen=True)
class Frame:
    """Where a view's pixels lie on the ground: size, object box, and footprint units per pixel."""

    width: int
    height: int
    box: tuple[int, int, int, int]  # x, y, w, h of the object
    units_per_px: float  # footprint units per pixel (gsd / reference side)
    gsd: float  # metres per pixel


def make_terrain_style(rng: np.random.Generator, biome: str, object_seed: tuple[int, ...]) -> TerrainStyle:
    base = np.asarray(BIOMES[biome], dtype=np.float32) / 255.0
    palette = np.clip(
        base * rng.uniform(0.85, 1.15, size=(3, 1)) * rng.uniform(0.96, 1.04, size=(3, 3)), 0, 1
    )
    lattices = []
    for _field in range(2):
        for cell, _weight in _OCTAVES:
            n = math.ceil(2 * EXTENT / cell)
            lattices.append(Image.fromarray(rng.standard_normal((n, n), dtype=np.float32)))
    parcels = None
    if biome not in ("tundra", "boreal") and rng.random() < 0.55:
        parcels = (
            float(rng.uniform(0, math.pi)),
            float(rng.uniform(0.08, 0.3)),
            rng.uniform(0.75, 1.25, (16, 16)).astype(np.float32),
        )
    roads = []
    for _ in range(int(rng.integers(0, 4))):
        grey = int(rng.integers(60, 150))
        roads.append((float(rng.uniform(0, math.pi)), float(rng.uniform(-0.6, 0.6)), float(rng.uniform(6, 22)),
                      (grey, grey, grey + 4)))  # fmt: skip
    return TerrainStyle(
        palette=palette.astype(np.float32),
        lattices=tuple(lattices),
        parcels=parcels,
        roads=tuple(roads),
        object_colour=object_colour_matrix(rng),
        object_frame=_object_frame(rng),
        object_seed=object_seed,
    )


def object_colour_matrix(rng: np.random.Generator) -> np.ndarray:
    """A per-location recolouring of the object: any hue, a random saturation and brightness.

    Real sites of one category come in every paint and roof colour, so colour must not name the
    category: only shapes and their arrangement do (what self-supervised features should pick up).
    """
    angle = rng.uniform(0, 2 * math.pi)
    axis = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    grey = np.full((3, 3), 1 / 3)
    saturation, gain = rng.uniform(0.0, 0.35), rng.uniform(0.8, 1.2)
    return (gain * (grey + saturation * rotation @ (np.eye(3) - grey))).astype(np.float32)


def _object_frame(rng: np.random.Generator) -> tuple[float, float, float]:
    """Where the drawing sits inside the annotated box: 55-100% of its side, anywhere that fits."""
    scale = float(rng.uniform(0.55, 1.0))
    return scale, float(rng.uniform(0, 1 - scale)), float(rng.uniform(0, 1 - scale))


def render_view(
    category: str,
    style: TerrainStyle,
    look: Look,
    frame: Frame,
    rng: np.random.Generator,
    stroke: float = 1.0,
) -> Image.Image:
    """One RGB view: terrain, roads, the category's object in its box, then the acquisition effects.

    `stroke` widens every line and outline of the object (the toy scene's 2.5 keeps shapes visible after
    the view is shrunk to 64 px)."""
    image = _terrain(style, frame)
    draw = ImageDraw.Draw(image)
    _roads(draw, style, frame)
    x, y, w, h = frame.box
    scale, du, dv = style.object_frame
    inner = (round(x + du * w), round(y + dv * h), max(2, round(scale * w)), max(2, round(scale * h)))
    pen = Pen(draw, inner, np.random.default_rng(list(style.object_seed)), style.object_colour, look, stroke)
    RECIPES[category](pen)
    return _acquire(np.asarray(image).copy(), look, rng)


def msrgb_from_rgb(
    rgb: Image.Image, size: tuple[int, int], rng: np.random.Generator, noise: float
) -> Image.Image:
    """The coarser multispectral RGB: area-averaged to about 1/4 the side, with its own band balance and
    its own sensor noise (averaging removed the pan noise, which would leave it unrealistically smooth)."""
    small = np.asarray(rgb.resize(size, Image.Resampling.BOX)).astype(np.float32)
    small *= np.array([0.97, 1.0, 1.04], dtype=np.float32)
    small += rng.standard_normal(small.shape[:2], dtype=np.float32)[..., None] * (0.8 * noise)
    return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- terrain


def _sample(
    lattice: Image.Image, u0: float, v0: float, u1: float, v1: float, size: tuple[int, int]
) -> np.ndarray:
    """Bicubic samples of a lattice over the ground rectangle [u0, u1] x [v0, v1] (footprint units)."""
    n = lattice.size[0]
    cell = 2 * EXTENT / n
    box = [(u0 + EXTENT) / cell, (v0 + EXTENT) / cell, (u1 + EXTENT) / cell, (v1 + EXTENT) / cell]
    box = [min(max(b, 0.0), float(n)) for b in box]
    box[2], box[3] = max(box[2], box[0] + 1e-3), max(box[3], box[1] + 1e-3)
    return np.asarray(lattice.resize(size, Image.Resampling.BICUBIC, box=tuple(box)))


def _ground_rect(frame: Frame) -> tuple[float, float, float, float]:
    """The image's ground rectangle in footprint units, with the object box centre at the origin."""
    x, y, w, h = frame.box
    cx, cy = x + w / 2, y + h / 2
    upp = frame.units_per_px
    return (-cx * upp, -cy * upp, (frame.width - cx) * upp, (frame.height - cy) * upp)


def _smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a), 0, 1)
    return t * t * (3 - 2 * t)


def _terrain(style: TerrainStyle, frame: Frame) -> Image.Image:
    scale = min(0.5, _TERRAIN_MAX_SIDE / max(frame.width, frame.height))
    size = (max(8, round(frame.width * scale)), max(8, round(frame.height * scale)))
    u0, v0, u1, v1 = _ground_rect(frame)
    n_oct = len(_OCTAVES)
    fields = []
    for f in range(2):
        acc = np.zeros((size[1], size[0]), dtype=np.float32)
        for k, (_cell, weight) in enumerate(_OCTAVES):
            acc += weight * _sample(style.lattices[f * n_oct + k], u0, v0, u1, v1, size)
        fields.append(acc / math.sqrt(sum(w * w for _c, w in _OCTAVES)))
    height, moisture = fields
    soil, veg, accent = style.palette
    wet = _smoothstep(-0.4, 0.6, moisture)[..., None]
    rock = (0.8 * _smoothstep(0.9, 1.7, height))[..., None]
    colour = soil + wet * (veg - soil)
    colour += rock * (accent - colour)
    shade = 1 + 0.1 * height
    if style.parcels is not None:
        angle, cell, values = style.parcels
        us = np.linspace(u0, u1, size[0], dtype=np.float32)[None, :] / cell
        vs = np.linspace(v0, v1, size[1], dtype=np.float32)[:, None] / cell
        iu = np.floor(us * math.cos(angle) + vs * math.sin(angle)).astype(np.int64) % 16
        iv = np.floor(vs * math.cos(angle) - us * math.sin(angle)).astype(np.int64) % 16
        shade *= values[iv, iu]
    colour *= shade[..., None]
    image = Image.fromarray(np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8))
    if size != (frame.width, frame.height):
        image = image.resize((frame.width, frame.height), Image.Resampling.BICUBIC)
    return image


def _roads(draw: ImageDraw.ImageDraw, style: TerrainStyle, frame: Frame) -> None:
    x, y, w, h = frame.box
    cx, cy = x + w / 2, y + h / 2
    for angle, offset, width_m, colour in style.roads:
        tx, ty = math.cos(angle), math.sin(angle)
        px, py = cx + (-ty * offset) / frame.units_per_px, cy + (tx * offset) / frame.units_per_px
        reach = 2 * (frame.width + frame.height)
        width = max(1, round(width_m / frame.gsd))
        draw.line(
            [(px - tx * reach, py - ty * reach), (px + tx * reach, py + ty * reach)], fill=colour, width=width
        )


# ------------------------------------------------------------------------------------------ acquisition


def _acquire(arr: np.ndarray, look: Look, rng: np.random.Generator) -> Image.Image:
    """Season and light gains, snow, fine texture, clouds, haze and noise, in row strips to bound memory."""
    height, width = arr.shape[:2]
    texture = _lowres_field(rng, width, height, cell_px=3.0, max_side=None)
    cloud = _cloud_alpha(rng, width, height, look.cloud_cover) if look.cloud_cover > 0 else None
    gain = (look.gain * (1 - look.haze)).astype(np.float32)
    offset = (look.haze * 255 * np.array([0.78, 0.8, 0.84])).astype(np.float32)
    snow_colour = np.array([235, 237, 242], dtype=np.float32)
    for y0 in range(0, height, _STRIP_ROWS):
        y1 = min(height, y0 + _STRIP_ROWS)
        rows = (width, y1 - y0)
        x = arr[y0:y1].astype(np.float32)
        if look.snow > 0:
            cover = look.snow * _smoothstep(40.0, 115.0, x.mean(axis=2, keepdims=True))
            x += cover * (snow_colour - x)
        x *= gain
        x += offset
        if cloud is not None:
            alpha = _strip(cloud, width, height, y0, y1, rows)[..., None]
            x += alpha * (237.0 - x)
        grain = _strip(texture, width, height, y0, y1, rows) * look.texture
        grain += rng.standard_normal((y1 - y0, width), dtype=np.float32) * look.noise
        grain += 0.5
        x += grain[..., None]
        np.clip(x, 0, 255, out=x)
        arr[y0:y1] = x.astype(np.uint8)
    return Image.fromarray(arr)


def _lowres_field(
    rng: np.random.Generator, width: int, height: int, cell_px: float, max_side: int | None
) -> Image.Image:
    """A smooth random field with cells of about `cell_px` pixels, stored coarse (a float 'F' image)."""
    nx, ny = max(2, math.ceil(width / cell_px)), max(2, math.ceil(height / cell_px))
    if max_side is not None:
        f = min(1.0, max_side / max(nx, ny))
        nx, ny = max(2, round(nx * f)), max(2, round(ny * f))
    return Image.fromarray(rng.standard_normal((ny, nx), dtype=np.float32))


def _strip(
    field: Image.Image, width: int, height: int, y0: int, y1: int, size: tuple[int, int]
) -> np.ndarray:
    fw, fh = field.size
    box = (0.0, y0 * fh / height, float(fw), y1 * fh / height)
    return np.asarray(field.resize(size, Image.Resampling.BILINEAR, box=box))


def _cloud_alpha(rng: np.random.Generator, width: int, height: int, cover: float) -> Image.Image:
    coarse = _lowres_field(rng, width, height, cell_px=max(width, height) / 6, max_side=None)
    fine = _lowres_field(rng, width, height, cell_px=max(width, height) / 24, max_side=None)
    size = (64, max(2, round(64 * height / width)))
    field = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC)) + 0.4 * np.asarray(
        fine.resize(size, Image.Resampling.BICUBIC)
    )
    threshold = float(np.quantile(field, 1 - cover))
    alpha = _smoothstep(threshold - 0.25, threshold + 0.35, field) * 0.95
    return Image.fromarray(alpha.astype(np.float32))


# ------------------------------------------------------------------------------------------------ objects


class Pen:
    """Draws in box coordinates: (0, 0) is the box's top-left and (1, 1) its bottom-right corner.

    Sizes (`r`, `width`, `length`) are fractions of the box's shorter side. Layout randomness comes from
    `rng`, which every view of a location recreates from the same seed, so views agree on the object.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator,
                 colour: np.ndarray, look: Look, stroke: float = 1.0) -> None:  # fmt: skip
        self.draw = draw
        self.stroke = stroke
        self.x, self.y, self.w, self.h = box
        self.m = min(self.w, self.h)
        self.rng = rng
        self.colour = colour
        elevation = math.radians(max(look.sun_elevation, 8.0))
        azimuth = math.radians(look.sun_azimuth)
        reach = min(3.0, 1 / math.tan(elevation))
        self.shadow_dir = (-math.sin(azimuth) * reach, math.cos(azimuth) * reach)

    def c(self, rgb: RGB) -> RGB:
        out = self.colour @ np.asarray(rgb, dtype=np.float32)
        return tuple(int(v) for v in np.clip(out + 0.5, 0, 255))  # type: ignore[return-value]

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.x + u * self.w, self.y + v * self.h)

    def px(self, size: float) -> int:
        """A line or outline width in pixels (times the scene's stroke factor)."""
        return max(1, round(size * self.m * self.stroke))

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: RGB | None, outline: RGB | None = None,
             width: float = 0.02) -> None:  # fmt: skip
        (a, b), (c, d) = self.p(min(u0, u1), min(v0, v1)), self.p(max(u0, u1), max(v0, v1))
        self.draw.rectangle(
            [a, b, max(a, c - 1), max(b, d - 1)],
            fill=self.c(fill) if fill else None,
            outline=self.c(outline) if outline else None,
            width=self.px(width) if outline else 0,
        )

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: RGB | None = None,
                outline: RGB | None = None, width: float = 0.02) -> None:  # fmt: skip
        cx, cy = self.p(u, v)
        hw, hh = max(0.5, ru * self.w), max(0.5, rv * self.h)
        self.draw.ellipse(
            [cx - hw, cy - hh, cx + hw, cy + hh],
            fill=self.c(fill) if fill else None,
            outline=self.c(outline) if outline else None,
            width=self.px(width) if outline else 0,
        )

    def circle(self, u: float, v: float, r: float, fill: RGB | None = None, outline: RGB | None = None,
               width: float = 0.02) -> None:  # fmt: skip
        self.ellipse(u, v, r * self.m / self.w, r * self.m / self.h, fill, outline, width)

    def line(self, pts: Sequence[tuple[float, float]], width: float, fill: RGB) -> None:
        self.draw.line([self.p(u, v) for u, v in pts], fill=self.c(fill), width=self.px(width), joint="curve")

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGB, outline: RGB | None = None) -> None:
        self.draw.polygon(
            [self.p(u, v) for u, v in pts], fill=self.c(fill), outline=self.c(outline) if outline else None
        )

    def blob(self, u: float, v: float, r: float, fill: RGB, rough: float = 0.35, n: int = 14) -> None:
        radii = r * (1 + rough * (self.rng.random(n) - 0.5) * 2)
        angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
        pts = [(u + rr * math.cos(a) * self.m / self.w, v + rr * math.sin(a) * self.m / self.h)
               for rr, a in zip(radii, angles, strict=True)]  # fmt: skip
        self.poly(pts, fill)

    def shadow(self, u: float, v: float, length: float, width: float) -> None:
        """A cast shadow from (u, v) away from the sun; `length` is the object's height (box fractions)."""
        dx, dy = self.shadow_dir
        cx, cy = self.p(u, v)
        tip = (cx + dx * length * self.m, cy + dy * length * self.m)
        self.draw.line([(cx, cy), tip], fill=SHADOW, width=self.px(width))

    def uniform(self, a: float, b: float) -> float:
        return float(self.rng.uniform(a, b))

    def integers(self, a: int, b: int) -> int:
        return int(self.rng.integers(a, b + 1))

    def choice(self, options: Sequence) -> object:
        return options[int(self.rng.integers(0, len(options)))]


RECIPES: dict[str, Callable[[Pen], None]] = {}


def _recipe(name: str) -> Callable[[Callable[[Pen], None]], Callable[[Pen], None]]:
    def register(fn: Callable[[Pen], None]) -> Callable[[Pen], None]:
        RECIPES[name] = fn
        return fn

    return register


def _water_band(pen: Pen, vertical: bool) -> None:
    a, b = pen.uniform(0.3, 0.4), pen.uniform(0.6, 0.7)
    if vertical:
        pen.poly([(a, -0.1), (b, -0.1), (b + 0.05, 1.1), (a + 0.05, 1.1)], WATER)
    else:
        pen.poly([(-0.1, a), (1.1, a + 0.05), (1.1, b + 0.05), (-0.1, b)], WATER)


def _cars(pen: Pen, u0: float, v0: float, u1: float, v1: float, rows: int, cols: int, fill: float) -> None:
    du, dv = (u1 - u0) / cols, (v1 - v0) / rows
    for i in range(rows):
        for j in range(cols):
            if pen.rng.random() < fill:
                colour = pen.choice(BRIGHT)
                pen.rect(
                    u0 + j * du + 0.2 * du,
                    v0 + i * dv + 0.15 * dv,
                    u0 + (j + 0.8) * du,
                    v0 + (i + 0.6) * dv,
                    colour,
                )


@_recipe("airport")
def _airport(pen: Pen) -> None:
    pen.rect(0.05, 0.6, 0.65, 0.95, CONCRETE)
    a = pen.uniform(0.1, 0.3)
    pen.line([(0.0, a), (1.0, a + 0.25)], 0.08, ASPHALT)
    pen.line([(0.0, a), (1.0, a + 0.25)], 0.006, WHITE)
    b = pen.uniform(0.15, 0.35)
    pen.line([(b, 0.0), (b + 0.45, 1.0)], 0.07, ASPHALT)
    for k in range(pen.integers(2, 4)):
        pen.rect(0.1 + 0.17 * k, 0.7, 0.22 + 0.17 * k, 0.78, WHITE)


@_recipe("airport_hangar")
def _hangar(pen: Pen) -> None:
    pen.rect(0.0, 0.7, 1.0, 1.0, ASPHALT)
    pen.rect(0.1, 0.1, 0.9, 0.72, ROOF)
    n = pen.integers(6, 10)
    for k in range(n):
        u = 0.1 + 0.8 * (k + 0.5) / n
        pen.line([(u, 0.1), (u, 0.72)], 0.015, WHITE if k % 2 else SHADOW)


@_recipe("airport_terminal")
def _terminal(pen: Pen) -> None:
    pen.rect(0.0, 0.55, 1.0, 1.0, ASPHALT)
    pen.rect(0.05, 0.25, 0.95, 0.45, WHITE)
    n = pen.integers(3, 6)
    for k in range(n):
        u = 0.1 + 0.8 * (k + 0.5) / n
        pen.rect(u - 0.02, 0.45, u + 0.02, 0.8, CONCRETE)
        pen.line([(u + 0.06, 0.7), (u + 0.06, 0.9)], 0.03, WHITE)
        pen.line([(u + 0.02, 0.78), (u + 0.1, 0.78)], 0.02, WHITE)


@_recipe("amusement_park")
def _amusement(pen: Pen) -> None:
    pen.rect(0.02, 0.02, 0.98, 0.98, SAND)
    pen.circle(0.3, 0.3, 0.2, None, WHITE, 0.03)
    pen.line([(0.3, 0.1), (0.3, 0.5)], 0.01, WHITE)
    pen.line([(0.1, 0.3), (0.5, 0.3)], 0.01, WHITE)
    pen.line([(0.05, 0.9), (0.5, 0.6), (0.95, 0.8)], 0.03, CONCRETE)
    for _ in range(pen.integers(6, 10)):
        pen.circle(
            pen.uniform(0.5, 0.95), pen.uniform(0.05, 0.95), pen.uniform(0.03, 0.08), pen.choice(BRIGHT)
        )


@_recipe("aquaculture")
def _aquaculture(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, BROWN)
    cols, rows = pen.integers(3, 5), pen.integers(2, 4)
    for i in range(rows):
        for j in range(cols):
            tone = pen.choice(((45, 95, 90), (60, 110, 80), (40, 80, 100)))
            pen.rect(j / cols + 0.03, i / rows + 0.04, (j + 1) / cols - 0.03, (i + 1) / rows - 0.04, tone)


@_recipe("archaeological_site")
def _archaeological(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (196, 172, 130))
    for k in range(4):
        e = 0.08 + 0.1 * k
        pen.rect(e, e, 1 - e, 1 - e, None, (150, 125, 95), 0.03)
    for _ in range(pen.integers(8, 16)):
        u, v = pen.uniform(0.05, 0.9), pen.uniform(0.05, 0.9)
        pen.rect(u, v, u + 0.05, v + 0.03, (165, 140, 110))


@_recipe("barn")
def _barn(pen: Pen) -> None:
    pen.shadow(0.7, 0.3, 0.25, 0.3)
    pen.rect(0.15, 0.25, 0.85, 0.7, RED)
    pen.line([(0.15, 0.475), (0.85, 0.475)], 0.025, (220, 210, 200))
    pen.circle(0.85, 0.82, 0.1, CONCRETE, SHADOW, 0.02)


@_recipe("border_checkpoint")
def _border(pen: Pen) -> None:
    pen.rect(0.0, 0.35, 1.0, 0.65, ASPHALT)
    pen.rect(0.4, 0.28, 0.6, 0.72, WHITE)
    for k in range(4):
        pen.rect(0.44, 0.36 + 0.075 * k, 0.56, 0.4 + 0.075 * k, RED)
    _cars(pen, 0.0, 0.38, 0.38, 0.62, 3, 6, 0.7)
    pen.rect(0.65, 0.7, 0.9, 0.9, ROOF)


@_recipe("burial_site")
def _burial(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, GRASS)
    pen.line([(0.5, 0.0), (0.5, 1.0)], 0.04, SAND)
    pen.line([(0.0, 0.5), (1.0, 0.5)], 0.04, SAND)
    n = pen.integers(7, 11)
    for i in range(n):
        for j in range(n):
            u, v = (j + 0.5) / n, (i + 0.5) / n
            if abs(u - 0.5) > 0.05 and abs(v - 0.5) > 0.05:
                pen.rect(u - 0.015, v - 0.025, u + 0.015, v + 0.025, (200, 200, 195))


@_recipe("car_dealership")
def _dealership(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, ASPHALT)
    pen.rect(0.1, 0.05, 0.9, 0.3, WHITE)
    _cars(pen, 0.05, 0.38, 0.95, 0.95, 5, 10, 0.9)


@_recipe("construction_site")
def _construction(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (160, 120, 80))
    for _ in range(pen.integers(2, 4)):
        u, v = pen.uniform(0.05, 0.5), pen.uniform(0.05, 0.5)
        pen.rect(u, v, u + pen.uniform(0.2, 0.4), v + pen.uniform(0.2, 0.4), None, CONCRETE, 0.03)
    for _ in range(pen.integers(3, 6)):
        pen.blob(pen.uniform(0.1, 0.9), pen.uniform(0.1, 0.9), pen.uniform(0.04, 0.1), (140, 100, 70))
    u = pen.uniform(0.3, 0.7)
    pen.shadow(u, 0.5, 0.6, 0.015)
    pen.line([(u, 0.5), (u + 0.35, 0.2)], 0.02, YELLOW)


@_recipe("crop_field")
def _crop(pen: Pen) -> None:
    for i in range(2):
        for j in range(2):
            tone = pen.choice(((120, 150, 60), (180, 170, 90), (90, 130, 55), (150, 120, 80)))
            u0, v0 = j / 2 + 0.01, i / 2 + 0.01
            pen.rect(u0, v0, u0 + 0.48, v0 + 0.48, tone)
            n = pen.integers(5, 9)
            for k in range(n):
                t = (k + 0.5) / n * 0.48
                if (i + j + pen.integers(0, 1)) % 2:
                    pen.line([(u0 + t, v0), (u0 + t, v0 + 0.48)], 0.012, DARKGREEN)
                else:
                    pen.line([(u0, v0 + t), (u0 + 0.48, v0 + t)], 0.012, DARKGREEN)


@_recipe("dam")
def _dam(pen: Pen) -> None:
    pen.poly([(0.0, 0.0), (1.0, 0.0), (1.0, 0.35), (0.5, 0.5), (0.0, 0.35)], WATER)
    pen.line([(0.0, 0.38), (0.25, 0.47), (0.5, 0.52), (0.75, 0.47), (1.0, 0.38)], 0.07, CONCRETE)
    pen.line([(0.5, 0.55), (0.55, 0.8), (0.45, 1.0)], 0.04, WATER)


@_recipe("debris_or_rubble")
def _debris(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (135, 125, 115))
    for _ in range(pen.integers(30, 50)):
        u, v, r = pen.uniform(0.0, 1.0), pen.uniform(0.0, 1.0), pen.uniform(0.02, 0.06)
        pts = [(u + pen.uniform(-r, r), v + pen.uniform(-r, r)) for _ in range(4)]
        pen.poly(pts, pen.choice(((90, 85, 80), (170, 160, 150), (120, 95, 70), (200, 195, 185))))


@_recipe("educational_institution")
def _school(pen: Pen) -> None:
    pen.rect(0.05, 0.05, 0.55, 0.25, (200, 170, 140))
    pen.rect(0.05, 0.05, 0.2, 0.6, (200, 170, 140))
    pen.rect(0.45, 0.4, 0.95, 0.95, GRASS)
    pen.ellipse(0.7, 0.675, 0.22, 0.24, None, (180, 80, 60), 0.03)


@_recipe("electric_substation")
def _substation(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (165, 162, 155))
    n = pen.integers(4, 7)
    for k in range(n + 1):
        t = k / n
        pen.line([(t, 0.0), (t, 1.0)], 0.012, SHADOW)
        pen.line([(0.0, t), (1.0, t)], 0.012, SHADOW)
    for i in range(n):
        for j in range(n):
            if pen.rng.random() < 0.5:
                pen.rect((j + 0.3) / n, (i + 0.3) / n, (j + 0.7) / n, (i + 0.7) / n, (90, 95, 100))


@_recipe("factory_or_powerplant")
def _factory(pen: Pen) -> None:
    pen.rect(0.05, 0.05, 0.6, 0.5, ROOF)
    pen.rect(0.05, 0.55, 0.45, 0.95, (175, 175, 180))
    for k in range(3):
        pen.circle(0.65 + 0.12 * k, 0.75, 0.08, WHITE, SHADOW, 0.01)
    pen.shadow(0.8, 0.25, 0.9, 0.04)
    pen.circle(0.8, 0.25, 0.05, (110, 105, 100))


@_recipe("fire_station")
def _fire(pen: Pen) -> None:
    pen.rect(0.0, 0.55, 1.0, 1.0, ASPHALT)
    pen.rect(0.1, 0.1, 0.9, 0.55, RED)
    pen.line([(0.1, 0.33), (0.9, 0.33)], 0.02, (120, 40, 35))
    for k in range(pen.integers(2, 3)):
        pen.rect(0.2 + 0.25 * k, 0.65, 0.3 + 0.25 * k, 0.9, (210, 30, 30))


@_recipe("flooded_road")
def _flooded(pen: Pen) -> None:
    pen.rect(0.0, 0.4, 1.0, 0.6, ASPHALT)
    pen.blob(0.5, 0.5, 0.32, (120, 100, 70), rough=0.4)
    pen.blob(pen.uniform(0.3, 0.7), 0.45, 0.15, (100, 90, 70), rough=0.4)


@_recipe("fountain")
def _fountain(pen: Pen) -> None:
    pen.circle(0.5, 0.5, 0.48, CONCRETE)
    pen.circle(0.5, 0.5, 0.36, (70, 140, 190))
    pen.circle(0.5, 0.5, 0.2, (110, 170, 210), WHITE, 0.04)
    pen.circle(0.5, 0.5, 0.06, WHITE)


@_recipe("gas_station")
def _gas(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, ASPHALT)
    pen.shadow(0.6, 0.3, 0.15, 0.4)
    pen.rect(0.15, 0.15, 0.65, 0.55, WHITE)
    for k in range(3):
        pen.rect(0.22 + 0.14 * k, 0.3, 0.26 + 0.14 * k, 0.42, RED)
    pen.rect(0.72, 0.6, 0.95, 0.9, (190, 160, 120))


@_recipe("golf_course")
def _golf(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, DARKGREEN)
    pts = [(pen.uniform(0.1, 0.9), pen.uniform(0.1, 0.9)) for _ in range(4)]
    for u, v in pts:
        pen.blob(u, v, pen.uniform(0.12, 0.2), (120, 175, 80))
        pen.blob(u + 0.08, v + 0.06, 0.04, SAND)
        pen.circle(u - 0.05, v - 0.05, 0.04, (140, 200, 90))
    pen.blob(pen.uniform(0.2, 0.8), pen.uniform(0.2, 0.8), 0.08, WATER)


@_recipe("ground_transportation_station")
def _station(pen: Pen) -> None:
    pen.rect(0.0, 0.2, 1.0, 0.8, (120, 115, 110))
    n = pen.integers(4, 7)
    for k in range(n):
        v = 0.25 + 0.5 * (k + 0.5) / n
        pen.line([(0.0, v - 0.012), (1.0, v - 0.012)], 0.006, SHADOW)
        pen.line([(0.0, v + 0.012), (1.0, v + 0.012)], 0.006, SHADOW)
        if k % 2:
            pen.rect(0.2, v - 0.04, 0.8, v - 0.025, CONCRETE)
    pen.rect(0.3, 0.0, 0.7, 0.2, (205, 190, 160))


@_recipe("helipad")
def _helipad(pen: Pen) -> None:
    pen.circle(0.5, 0.5, 0.47, (60, 62, 66), WHITE, 0.04)
    pen.rect(0.33, 0.28, 0.41, 0.72, WHITE)
    pen.rect(0.59, 0.28, 0.67, 0.72, WHITE)
    pen.rect(0.33, 0.46, 0.67, 0.54, WHITE)


@_recipe("hospital")
def _hospital(pen: Pen) -> None:
    pen.rect(0.35, 0.05, 0.65, 0.95, WHITE)
    pen.rect(0.05, 0.35, 0.95, 0.65, WHITE)
    pen.circle(0.5, 0.5, 0.1, (60, 62, 66), RED, 0.03)
    _cars(pen, 0.7, 0.72, 0.98, 0.98, 2, 4, 0.8)


@_recipe("impoverished_settlement")
def _slum(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (120, 100, 80))
    n = pen.integers(9, 13)
    for i in range(n):
        for j in range(n):
            u, v = (j + pen.uniform(0.05, 0.2)) / n, (i + pen.uniform(0.05, 0.2)) / n
            s = pen.uniform(0.55, 0.8) / n
            tone = pen.choice(((160, 160, 165), RUST, (95, 110, 140), (185, 175, 160), (130, 80, 60)))
            pen.rect(u, v, u + s, v + s * pen.uniform(0.7, 1.2), tone)


@_recipe("interchange")
def _interchange(pen: Pen) -> None:
    for cu, cv in ((0.28, 0.28), (0.72, 0.28), (0.28, 0.72), (0.72, 0.72)):
        pen.ellipse(cu, cv, 0.17, 0.17, None, ASPHALT, 0.04)
    pen.line([(0.0, 0.5), (1.0, 0.5)], 0.08, ASPHALT)
    pen.line([(0.5, 0.0), (0.5, 1.0)], 0.08, ASPHALT)
    pen.line([(0.0, 0.5), (1.0, 0.5)], 0.006, WHITE)


@_recipe("lake_or_pond")
def _lake(pen: Pen) -> None:
    pen.blob(0.5, 0.5, 0.46, SAND, rough=0.2)
    pen.blob(0.5, 0.5, 0.4, WATER, rough=0.25)
    pen.blob(0.45, 0.45, 0.2, (30, 55, 90), rough=0.3)


@_recipe("lighthouse")
def _lighthouse(pen: Pen) -> None:
    side = pen.integers(0, 1)
    if side:
        pen.poly([(0.55, -0.1), (1.1, -0.1), (1.1, 1.1), (0.7, 1.1)], WATER)
    else:
        pen.poly([(-0.1, -0.1), (0.45, -0.1), (0.3, 1.1), (-0.1, 1.1)], WATER)
    pen.shadow(0.5, 0.5, 1.2, 0.08)
    pen.circle(0.5, 0.5, 0.14, WHITE, RED, 0.05)


@_recipe("military_facility")
def _military(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (140, 135, 105), OLIVE, 0.02)
    for i in range(pen.integers(3, 5)):
        for j in range(3):
            pen.rect(0.08 + 0.3 * j, 0.08 + 0.2 * i, 0.3 + 0.3 * j, 0.16 + 0.2 * i, OLIVE)
    _cars(pen, 0.6, 0.8, 0.98, 0.98, 1, 6, 0.9)


@_recipe("multi-unit_residential")
def _apartments(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, GRASS)
    n = pen.integers(3, 6)
    for k in range(n):
        u = 0.05 + 0.9 * k / n
        pen.shadow(u + 0.05, 0.15, 0.3, 0.1)
        pen.rect(u, 0.08, u + 0.5 / n, 0.92, pen.choice(((190, 180, 170), (200, 150, 120), (170, 170, 175))))


@_recipe("nuclear_powerplant")
def _nuclear(pen: Pen) -> None:
    for u in (0.25, 0.6):
        pen.shadow(u, 0.3, 0.5, 0.3)
        pen.circle(u, 0.3, 0.18, (110, 110, 112), (215, 215, 210), 0.06)
    pen.circle(0.8, 0.75, 0.12, (200, 200, 195), SHADOW, 0.02)
    pen.rect(0.1, 0.6, 0.6, 0.85, ROOF)


@_recipe("office_building")
def _office(pen: Pen) -> None:
    pen.shadow(0.5, 0.5, 1.6, 0.45)
    pen.rect(0.25, 0.25, 0.75, 0.75, (120, 135, 150))
    for k in range(4):
        t = 0.3 + 0.13 * k
        pen.line([(0.25, t), (0.75, t)], 0.01, (190, 200, 210))
        pen.line([(t, 0.25), (t, 0.75)], 0.01, (190, 200, 210))


@_recipe("oil_or_gas_facility")
def _oil(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (190, 175, 145))
    nodes = [(pen.uniform(0.1, 0.9), pen.uniform(0.1, 0.9)) for _ in range(pen.integers(5, 8))]
    for a, b in itertools.pairwise(nodes):
        pen.line([a, b], 0.012, SHADOW)
    for u, v in nodes:
        pen.circle(u, v, 0.06, (225, 225, 220), SHADOW, 0.015)
    pen.circle(nodes[0][0], nodes[0][1], 0.025, (240, 140, 40))


@_recipe("park")
def _park(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, GRASS)
    pen.line(
        [(0.0, pen.uniform(0.2, 0.8)), (0.35, 0.3), (0.65, 0.7), (1.0, pen.uniform(0.2, 0.8))], 0.025, SAND
    )
    for _ in range(pen.integers(15, 30)):
        pen.circle(pen.uniform(0.0, 1.0), pen.uniform(0.0, 1.0), pen.uniform(0.025, 0.05), DARKGREEN)
    pen.blob(pen.uniform(0.3, 0.7), pen.uniform(0.3, 0.7), 0.1, WATER)


@_recipe("parking_lot_or_garage")
def _parking(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, ASPHALT)
    rows, cols = pen.integers(3, 5), pen.integers(8, 12)
    for i in range(rows):
        v = (i + 0.5) / rows
        for j in range(cols + 1):
            u = j / cols
            pen.line([(u, v - 0.12), (u, v + 0.12)], 0.006, WHITE)
    _cars(pen, 0.0, 0.05, 1.0, 0.95, rows * 2, cols, 0.55)


@_recipe("place_of_worship")
def _worship(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (200, 190, 170))
    pen.rect(0.4, 0.05, 0.6, 0.95, (170, 110, 85))
    pen.rect(0.15, 0.3, 0.85, 0.45, (170, 110, 85))
    pen.circle(0.5, 0.375, 0.12, (120, 150, 140), WHITE, 0.02)


@_recipe("police_station")
def _police(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, ASPHALT)
    pen.rect(0.05, 0.05, 0.6, 0.6, (100, 115, 140))
    pen.rect(0.05, 0.05, 0.6, 0.6, None, WHITE, 0.02)
    for i in range(3):
        for j in range(3):
            tone = WHITE if (i + j) % 2 else (20, 20, 25)
            pen.rect(0.66 + 0.1 * j, 0.15 + 0.25 * i, 0.72 + 0.1 * j, 0.27 + 0.25 * i, tone)


@_recipe("port")
def _port(pen: Pen) -> None:
    pen.rect(0.0, 0.5, 1.0, 1.0, WATER)
    for k in range(pen.integers(2, 4)):
        u = 0.15 + 0.3 * k
        pen.rect(u, 0.45, u + 0.08, 0.9, CONCRETE)
    for i in range(3):
        for j in range(8):
            pen.rect(0.05 + 0.11 * j, 0.08 + 0.11 * i, 0.13 + 0.11 * j, 0.15 + 0.11 * i, pen.choice(BRIGHT))
    pen.line([(0.05, 0.43), (0.95, 0.43)], 0.015, YELLOW)


@_recipe("prison")
def _prison(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (150, 150, 140), (225, 225, 220), 0.05)
    n = pen.integers(3, 6)
    for k in range(n):
        a = 2 * math.pi * k / n + 0.3
        pen.line([(0.5, 0.5), (0.5 + 0.35 * math.cos(a), 0.5 + 0.35 * math.sin(a))], 0.09, (190, 185, 175))
    pen.circle(0.5, 0.5, 0.1, ROOF)


@_recipe("race_track")
def _race(pen: Pen) -> None:
    pen.ellipse(0.5, 0.5, 0.48, 0.42, (70, 70, 74))
    pen.ellipse(0.5, 0.5, 0.38, 0.3, GRASS)
    pen.line([(0.5, 0.08), (0.5, 0.2)], 0.02, WHITE)


@_recipe("railway_bridge")
def _rail_bridge(pen: Pen) -> None:
    _water_band(pen, vertical=True)
    for dv in (-0.04, 0.04):
        pen.line([(0.0, 0.5 + dv), (1.0, 0.5 + dv)], 0.012, (60, 50, 45))
    for k in range(12):
        u = k / 11
        pen.line([(u, 0.46), (u + 0.08, 0.54)], 0.008, (140, 140, 145))


@_recipe("recreational_facility")
def _courts(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (120, 135, 110))
    for i in range(2):
        for j in range(pen.integers(2, 3)):
            u, v = 0.05 + 0.32 * j, 0.08 + 0.46 * i
            pen.rect(u, v, u + 0.28, v + 0.38, pen.choice(((60, 120, 80), (60, 90, 150), (180, 90, 60))))
            pen.rect(u + 0.03, v + 0.04, u + 0.25, v + 0.34, None, WHITE, 0.01)
            pen.line([(u, v + 0.19), (u + 0.28, v + 0.19)], 0.01, WHITE)


@_recipe("road_bridge")
def _road_bridge(pen: Pen) -> None:
    _water_band(pen, vertical=True)
    pen.rect(-0.05, 0.42, 1.05, 0.58, (105, 105, 108))
    pen.line([(0.0, 0.5), (1.0, 0.5)], 0.008, YELLOW)
    for k in range(3):
        pen.rect(0.35 + 0.12 * k, 0.58, 0.37 + 0.12 * k, 0.63, SHADOW)


@_recipe("runway")
def _runway(pen: Pen) -> None:
    pen.rect(0.0, 0.38, 1.0, 0.62, ASPHALT)
    for k in range(10):
        pen.rect(0.12 + 0.078 * k, 0.49, 0.16 + 0.078 * k, 0.51, WHITE)
    for u in (0.02, 0.94):
        for k in range(4):
            pen.rect(u, 0.41 + 0.05 * k, u + 0.04, 0.43 + 0.05 * k, WHITE)


@_recipe("shipyard")
def _shipyard(pen: Pen) -> None:
    pen.rect(0.55, 0.0, 1.0, 1.0, WATER)
    for k in range(pen.integers(2, 4)):
        v = 0.15 + 0.28 * k
        pen.rect(0.1, v, 0.75, v + 0.12, CONCRETE)
        pen.poly([(0.2, v + 0.02), (0.6, v + 0.02), (0.7, v + 0.06), (0.6, v + 0.1), (0.2, v + 0.1)],
                 pen.choice(((150, 60, 50), (110, 115, 120), (60, 70, 90))))  # fmt: skip
    pen.line([(0.05, 0.05), (0.05, 0.95)], 0.02, YELLOW)


@_recipe("shopping_mall")
def _mall(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, ASPHALT)
    pen.rect(0.2, 0.2, 0.8, 0.6, (215, 212, 205))
    pen.rect(0.35, 0.15, 0.65, 0.7, (215, 212, 205))
    pen.circle(0.5, 0.4, 0.06, (150, 190, 200))
    _cars(pen, 0.02, 0.75, 0.98, 0.98, 2, 12, 0.6)


@_recipe("single-unit_residential")
def _houses(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (110, 150, 80))
    pen.line([(0.0, 0.5), (1.0, 0.5)], 0.06, ASPHALT)
    for k in range(pen.integers(3, 6)):
        u = 0.05 + 0.19 * k
        v = 0.12 if k % 2 else 0.6
        tone = pen.choice(((150, 80, 60), (90, 90, 95), (180, 160, 140), (120, 60, 50)))
        pen.rect(u, v, u + 0.14, v + 0.22, tone)
        pen.line([(u, v + 0.11), (u + 0.14, v + 0.11)], 0.01, SHADOW)
    pen.rect(0.8, 0.8, 0.92, 0.9, CYAN)


@_recipe("smokestack")
def _smokestack(pen: Pen) -> None:
    pen.rect(0.3, 0.55, 0.7, 0.8, ROOF)
    pen.shadow(0.5, 0.45, 2.5, 0.09)
    pen.circle(0.5, 0.45, 0.1, (140, 130, 125), SHADOW, 0.04)


@_recipe("solar_farm")
def _solar(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (175, 165, 140))
    n = pen.integers(6, 10)
    for k in range(n):
        v = 0.04 + 0.92 * k / n
        pen.rect(0.04, v, 0.96, v + 0.6 / n, (28, 40, 80))


@_recipe("space_facility")
def _space(pen: Pen) -> None:
    pen.circle(0.5, 0.5, 0.42, CONCRETE)
    for k in range(6):
        a = k * math.pi / 3
        pen.line([(0.5, 0.5), (0.5 + 0.45 * math.cos(a), 0.5 + 0.45 * math.sin(a))], 0.02, (90, 85, 80))
    pen.shadow(0.6, 0.5, 1.8, 0.05)
    pen.rect(0.57, 0.47, 0.63, 0.53, RED)


@_recipe("stadium")
def _stadium(pen: Pen) -> None:
    pen.ellipse(0.5, 0.5, 0.49, 0.46, (175, 175, 180))
    pen.ellipse(0.5, 0.5, 0.36, 0.32, (160, 60, 50))
    pen.rect(0.25, 0.3, 0.75, 0.7, GRASS)
    pen.line([(0.5, 0.3), (0.5, 0.7)], 0.01, WHITE)
    pen.circle(0.5, 0.5, 0.06, None, WHITE, 0.01)


@_recipe("storage_tank")
def _tanks(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (165, 160, 150))
    n = pen.integers(2, 3)
    for i in range(n):
        for j in range(n):
            if pen.rng.random() < 0.85:
                u, v = (j + 0.5) / n, (i + 0.5) / n
                pen.shadow(u, v, 0.25, 0.55 / n)
                pen.circle(u, v, 0.3 / n, pen.choice((WHITE, (200, 200, 195))), SHADOW, 0.01)


@_recipe("surface_mine")
def _mine(pen: Pen) -> None:
    tones = ((185, 150, 110), (160, 125, 90), (140, 105, 75), (115, 85, 60), (90, 70, 55))
    for k, tone in enumerate(tones):
        pen.blob(0.5, 0.5, 0.48 - 0.09 * k, tone, rough=0.15)
    pen.line([(0.5, 0.05), (0.8, 0.3), (0.6, 0.6), (0.5, 0.5)], 0.02, (200, 180, 140))


@_recipe("swimming_pool")
def _pool(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (215, 210, 200))
    pen.rect(0.12, 0.15, 0.88, 0.85, CYAN)
    for k in range(1, 6):
        v = 0.15 + 0.7 * k / 6
        pen.line([(0.15, v), (0.85, v)], 0.012, BLUE)


@_recipe("toll_booth")
def _toll(pen: Pen) -> None:
    pen.rect(0.0, 0.15, 1.0, 0.85, ASPHALT)
    pen.rect(0.42, 0.1, 0.58, 0.9, WHITE)
    n = pen.integers(5, 8)
    for k in range(n):
        v = 0.18 + 0.64 * (k + 0.5) / n
        pen.rect(0.47, v - 0.02, 0.53, v + 0.02, (200, 60, 40))
    _cars(pen, 0.0, 0.2, 0.35, 0.8, n, 3, 0.5)


@_recipe("tower")
def _tower(pen: Pen) -> None:
    pen.rect(0.35, 0.35, 0.65, 0.65, (170, 165, 155))
    pen.shadow(0.5, 0.5, 2.8, 0.04)
    for du, dv in ((-0.4, -0.4), (0.4, -0.4), (0.0, 0.45)):
        pen.line([(0.5, 0.5), (0.5 + du, 0.5 + dv)], 0.008, (210, 210, 205))
    pen.rect(0.45, 0.45, 0.55, 0.55, RED)


@_recipe("tunnel_opening")
def _tunnel(pen: Pen) -> None:
    pen.blob(0.75, 0.5, 0.5, DARKGREEN, rough=0.25)
    pen.rect(-0.05, 0.42, 0.55, 0.58, ASPHALT)
    pen.ellipse(0.55, 0.5, 0.08, 0.14, (15, 15, 18))
    pen.line([(0.0, 0.5), (0.5, 0.5)], 0.008, WHITE)


@_recipe("waste_disposal")
def _waste(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (125, 115, 100))
    for _ in range(pen.integers(15, 25)):
        tone = pen.choice(((170, 165, 160), (95, 85, 75), (210, 205, 200), (80, 110, 150), (150, 120, 80)))
        pen.blob(pen.uniform(0.05, 0.95), pen.uniform(0.05, 0.95), pen.uniform(0.05, 0.12), tone, rough=0.5)
    pen.line([(0.0, 0.9), (0.5, 0.6), (1.0, 0.7)], 0.03, (165, 150, 125))


@_recipe("water_treatment_facility")
def _water_treatment(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, (170, 168, 160))
    for u, v in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75)):
        pen.circle(u, v, 0.2, (55, 85, 80), CONCRETE, 0.03)
        pen.line([(u - 0.2, v), (u + 0.2, v)], 0.012, CONCRETE)
    for k in range(3):
        pen.rect(0.58, 0.58 + 0.12 * k, 0.95, 0.67 + 0.12 * k, (80, 130, 110))


@_recipe("wind_farm")
def _wind(pen: Pen) -> None:
    pen.line([(0.0, 0.8), (0.4, 0.5), (1.0, 0.6)], 0.012, (175, 160, 130))
    for _ in range(pen.integers(4, 7)):
        u, v = pen.uniform(0.1, 0.9), pen.uniform(0.1, 0.9)
        pen.shadow(u, v, 1.2, 0.012)
        spin = pen.uniform(0, 2 * math.pi / 3)
        for k in range(3):
            a = spin + 2 * math.pi * k / 3
            pen.line([(u, v), (u + 0.09 * math.cos(a), v + 0.09 * math.sin(a))], 0.012, WHITE)
        pen.circle(u, v, 0.02, WHITE)


@_recipe("zoo")
def _zoo(pen: Pen) -> None:
    pen.rect(0.0, 0.0, 1.0, 1.0, SAND)
    for i in range(2):
        for j in range(3):
            u, v = (j + 0.5) / 3, (i + 0.5) / 2
            pen.blob(u, v, 0.14, pen.choice((GRASS, (150, 140, 90), DARKGREEN)), rough=0.3)
    pen.blob(0.5, 0.5, 0.06, WATER)
    pen.rect(0.05, 0.88, 0.3, 0.98, (170, 120, 90))


if set(RECIPES) != set(CATEGORIES):  # every category must have exactly one recipe
    raise RuntimeError(f"recipes and categories differ: {sorted(set(CATEGORIES) ^ set(RECIPES))}")
