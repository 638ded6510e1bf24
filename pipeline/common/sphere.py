"""Coordinates on the sphere: lat/lon <-> 3-D unit vectors through pyproj's geocentric (ECEF) transform.

Clustering and averaging happen on unit vectors, never on raw degrees, so lon 179.9 and -179.9 are
neighbours and the poles are not stretched.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pyproj import Transformer

EARTH_RADIUS_KM = 6371.0088  # mean radius, for great-circle distances
_WGS84_A = 6378137.0
_WGS84_B = 6356752.314245179


@lru_cache(maxsize=1)
def _to_ecef() -> Transformer:
    return Transformer.from_crs("EPSG:4326", "EPSG:4978", always_xy=True)


@lru_cache(maxsize=1)
def _from_ecef() -> Transformer:
    return Transformer.from_crs("EPSG:4978", "EPSG:4326", always_xy=True)


def latlon_to_unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(N,) lat, lon in degrees -> (N, 3) unit vectors of their ECEF positions on the ellipsoid."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    x, y, z = _to_ecef().transform(lon, lat, np.zeros_like(lat))
    xyz = np.stack([x, y, z], axis=-1)
    return xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)


def unit_to_latlon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) directions (any length) -> geodetic lat, lon of where they pierce the WGS84 ellipsoid."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    d = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    r = 1.0 / np.sqrt((d[:, 0] ** 2 + d[:, 1] ** 2) / _WGS84_A**2 + d[:, 2] ** 2 / _WGS84_B**2)
    p = d * r[:, None]
    lon, lat, _ = _from_ecef().transform(p[:, 0], p[:, 1], p[:, 2])
    return np.asarray(lat), np.asarray(lon)


def spherical_mean(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float]:
    """Mean position of points on the sphere (normalised mean of their unit vectors)."""
    mlat, mlon = unit_to_latlon(latlon_to_unit(lat, lon).mean(axis=0, keepdims=True))
    return float(mlat[0]), float(mlon[0])


def great_circle_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between (N, 3) unit vectors a and b (row-wise)."""
    cos = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
    return np.arccos(cos) * EARTH_RADIUS_KM
