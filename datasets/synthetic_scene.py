"""Procedural one-point-perspective street scenes with CamVid's 11 classes (+ void).

A scene is a road running to a vanishing point, sidewalks, building facades with windows,
sky, and objects standing in depth (trees, poles with signs, fences, cars, pedestrians,
bicyclists), drawn back to front. Colours are drawn from overlapping ranges (grey roads,
grey buildings, grey poles, grey cars...) and every class has its own texture or shape
(window grids, paving tiles, asphalt grain, leafy blotches, slats, wheels), then the whole
image gets global lighting, shadows and sensor noise: a small network has to use texture,
shape and position, not colour alone.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .classes import CAMVID_CLASSES, CAMVID_VOID

C = {name: i for i, name in enumerate(CAMVID_CLASSES)}


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v), dtype=np.float32) * 255


class Scene:
    """Float RGB canvas + label map + the street geometry shared by all drawing steps."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng, self.h, self.w = rng, height, width
        self.img = np.zeros((height, width, 3), np.float32)
        self.lab = np.full((height, width), CAMVID_VOID, np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.horizon = height * rng.uniform(0.36, 0.5)
        self.vx = width * rng.uniform(0.35, 0.65)
        # Half-widths at the bottom row of the road edges (left, right) and of the sidewalks.
        self.road = width * rng.uniform(0.45, 0.85, size=2)
        self.walk = self.road * rng.uniform(1.6, 2.4, size=2)
        below = np.maximum(self.yy - self.horizon, 0)
        self.depth = below / (height - self.horizon)          # 0 at horizon, 1 at bottom row
        self.lateral = (self.xx - self.vx) / np.maximum(self.depth, 1e-3)

    # ---- helpers -------------------------------------------------------------------------
    def noise(self, cell: float) -> np.ndarray:
        """Smooth noise (std ~1) with features about `cell` pixels wide."""
        gh, gw = int(self.h / cell) + 2, int(self.w / cell) + 2
        return cv2.resize(self.rng.standard_normal((gh, gw)).astype(np.float32),
                          (self.w, self.h), interpolation=cv2.INTER_CUBIC)

    def grain(self) -> np.ndarray:
        return self.rng.standard_normal((self.h, self.w)).astype(np.float32)

    def paint(self, mask: np.ndarray, cls: int, colour, shade=None) -> None:
        """Fill `mask` with `colour` (RGB or per-pixel (H, W, 3)) times `shade` (H, W)."""
        colour = np.asarray(colour, np.float32)
        values = colour[mask] if colour.ndim == 3 else np.broadcast_to(colour, (mask.sum(), 3))
        if shade is not None:
            values = values * shade[mask][:, None]
        self.img[mask] = values
        self.lab[mask] = cls

    def poly(self, points) -> np.ndarray:
        canvas = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(canvas, [np.round(np.asarray(points) * 4).astype(np.int32)], 1, shift=2)
        return canvas.astype(bool)

    def ground_point(self, depth: float, lateral: float) -> tuple[float, float]:
        """Image (x, y) of a ground point at `depth` (0 = horizon, 1 = bottom row)."""
        return self.vx + lateral * depth, self.horizon + depth * (self.h - self.horizon)

    def grey_colour(self, low: float, high: float, max_sat: float = 0.15) -> np.ndarray:
        r = self.rng
        return _hsv(r.uniform(0, 360), r.uniform(0, max_sat), r.uniform(low, high))

    def any_colour(self) -> np.ndarray:
        r = self.rng
        if r.random() < 0.4:
            return self.grey_colour(0.1, 0.95)
        return _hsv(r.uniform(0, 360), r.uniform(0.3, 0.9), r.uniform(0.25, 0.95))


# ---- background: sky, ground, facades, road ------------------------------------------------
def draw_sky(s: Scene) -> None:
    r = s.rng
    if r.random() < 0.5:   # blue sky
        top, low = _hsv(r.uniform(195, 225), r.uniform(0.3, 0.7), r.uniform(0.6, 0.9)), None
    else:                  # overcast: greys overlapping building and road colours
        top = s.grey_colour(0.5, 0.85, max_sat=0.08)
    low = np.minimum(top * r.uniform(1.05, 1.3), 255)
    t = np.clip(s.yy / max(s.horizon, 1), 0, 1)[..., None]
    gradient = top * (1 - t) + low * t
    clouds = 1 + 0.12 * np.clip(s.noise(s.w / 6), 0, None)
    s.paint(np.ones((s.h, s.w), bool), C["sky"], gradient, clouds)


def draw_sidewalks(s: Scene) -> None:
    r = s.rng
    ground = s.yy > s.horizon
    tile = r.uniform(0.06, 0.12) * s.w
    along = (1 / np.maximum(s.depth, 1e-3)) * r.uniform(1.5, 3.0)
    joints = (np.abs(np.sin(np.pi * s.lateral / tile)) < 0.2) | (np.abs(np.sin(np.pi * along)) < 0.2)
    shade = (1 - 0.25 * joints) * (1 + 0.06 * s.grain())
    s.paint(ground, C["sidewalk"], s.grey_colour(0.4, 0.8, max_sat=0.2), shade)


def draw_facades(s: Scene) -> None:
    r = s.rng
    gap = s.w * 0.03
    for side in (-1, 1):
        if r.random() < 0.15:    # an open side: sky stays, trees will fill it
            continue
        dist = np.maximum(side * (s.xx - s.vx) - gap, 0)           # distance from the VP column
        base = s.horizon + dist * (s.h - s.horizon) / s.walk[(side + 1) // 2]
        cuts = np.sort(r.uniform(0, s.w, size=r.integers(1, 4)))
        edges = np.concatenate([[0], cuts, [s.w * 1.5]])
        for lo, hi in zip(edges[:-1], edges[1:]):
            roof = s.horizon - dist * r.uniform(0.25, 1.4) - s.h * r.uniform(0.0, 0.06)
            mask = (dist > lo) & (dist <= hi) & (s.yy >= roof) & (s.yy < base)
            if not mask.any():
                continue
            v = (s.yy - roof) / np.maximum(base - roof, 1)
            u = s.w * r.uniform(0.4, 1.0) / np.maximum(dist, 1)
            floors = r.uniform(3, 8)
            window = ((np.sin(2 * np.pi * u) > 0.2) & (np.sin(2 * np.pi * v * floors) > 0.0)
                      & (v < 0.85))
            glass = r.uniform(0.35, 0.6) if r.random() < 0.7 else r.uniform(1.25, 1.5)
            shade = np.where(window, glass, 1.0) * (1 + 0.05 * s.grain()) * (1 + 0.08 * s.noise(8))
            colour = (s.grey_colour(0.3, 0.85) if r.random() < 0.6 else
                      _hsv(r.uniform(0, 50), r.uniform(0.2, 0.6), r.uniform(0.3, 0.8)))
            s.paint(mask, C["building"], colour, shade)


def draw_road(s: Scene) -> None:
    r = s.rng
    left, right = s.road
    mask = (s.yy > s.horizon) & (s.lateral > -left) & (s.lateral < right)
    shade = (1 + 0.09 * s.grain()) * (1 + 0.1 * s.noise(s.w / 10))
    s.paint(mask, C["road"], s.grey_colour(0.22, 0.6, max_sat=0.08), shade)
    # Dashed centre line and solid edge lines: painted still as road (CamVid labels markings road).
    centre = r.uniform(-0.2, 0.2) * (right - left)
    dashes = np.sin(2 * np.pi / np.maximum(s.depth, 1e-3) * r.uniform(0.4, 0.8)) > 0
    marks = mask & (np.abs(s.lateral - centre) < s.w * 0.012) & dashes
    if r.random() < 0.5:
        marks |= mask & ((np.abs(s.lateral + left * 0.95) < s.w * 0.01)
                         | (np.abs(s.lateral - right * 0.95) < s.w * 0.01))
    colour = _hsv(50, 0.6, 0.85) if r.random() < 0.3 else s.grey_colour(0.75, 0.95, max_sat=0.05)
    s.paint(marks, C["road"], colour, 1 + 0.05 * s.grain())


# ---- objects standing in depth ---------------------------------------------------------------
def draw_fence(s: Scene) -> None:
    r = s.rng
    side = r.choice([-1, 1])
    walk = s.walk[(side + 1) // 2]
    lateral = side * walk * r.uniform(0.7, 0.95)
    d0, d1 = np.sort(r.uniform(0.05, 1.3, size=2))
    x0, y0 = s.ground_point(d0, lateral)
    x1, y1 = s.ground_point(d1, lateral)
    height = r.uniform(0.25, 0.45) * (s.h - s.horizon)
    mask = s.poly([(x0, y0), (x1, y1), (x1, y1 - height * d1), (x0, y0 - height * d0)])
    dist = np.abs(s.xx - s.vx)
    slats = np.sin(2 * np.pi * s.w * r.uniform(0.3, 0.6) / np.maximum(dist, 1)) > 0.3
    colour = (_hsv(r.uniform(20, 40), r.uniform(0.3, 0.6), r.uniform(0.3, 0.7)) if r.random() < 0.5
              else s.grey_colour(0.3, 0.8))
    s.paint(mask, C["fence"], colour, np.where(slats, 1.0, 0.6) * (1 + 0.05 * s.grain()))


def draw_tree(s: Scene, depth: float) -> None:
    r = s.rng
    side = r.choice([-1, 1])
    x, y = s.ground_point(depth, side * s.walk[(side + 1) // 2] * r.uniform(0.75, 1.1))
    scale = depth * (s.h - s.horizon)
    trunk_h, trunk_w = scale * r.uniform(0.5, 0.9), max(1.0, scale * 0.05)
    bark = _hsv(r.uniform(15, 40), r.uniform(0.2, 0.5), r.uniform(0.15, 0.45))
    s.paint(s.poly([(x - trunk_w, y), (x + trunk_w, y), (x + trunk_w, y - trunk_h),
                    (x - trunk_w, y - trunk_h)]), C["tree"], bark)
    radius = scale * r.uniform(0.5, 1.0)
    field = np.full((s.h, s.w), np.inf, np.float32)
    for _ in range(r.integers(3, 7)):
        cx = x + r.uniform(-0.7, 0.7) * radius
        cy = y - trunk_h - r.uniform(0.0, 0.8) * radius
        rr = radius * r.uniform(0.5, 0.9)
        field = np.minimum(field, ((s.xx - cx) ** 2 + (s.yy - cy) ** 2) / rr ** 2)
    crown = field + 0.3 * s.noise(max(2.0, radius / 3)) < 1
    hue = r.uniform(70, 150) if r.random() < 0.8 else r.uniform(25, 60)   # some autumn trees
    leaves = _hsv(hue, r.uniform(0.25, 0.75), r.uniform(0.25, 0.7))
    blotches = 1 + 0.3 * np.tanh(2 * s.noise(max(1.5, radius / 8))) + 0.08 * s.grain()
    s.paint(crown, C["tree"], leaves, blotches)


def draw_pole(s: Scene, depth: float) -> None:
    r = s.rng
    side = r.choice([-1, 1])
    x, y = s.ground_point(depth, side * s.road[(side + 1) // 2] * r.uniform(1.05, 1.3))
    scale = depth * (s.h - s.horizon)
    height, half = scale * r.uniform(1.2, 2.2), max(0.6, scale * 0.025)
    across = np.clip(1 - np.abs(s.xx - x) / (half + 0.5), 0, 1)      # cylinder shading
    colour = s.grey_colour(0.2, 0.75) if r.random() < 0.8 else _hsv(r.uniform(90, 150), 0.5, 0.3)
    s.paint(s.poly([(x - half, y), (x + half, y), (x + half, y - height), (x - half, y - height)]),
            C["pole"], colour, 0.75 + 0.35 * across)
    if r.random() < 0.65:
        size = max(1.5, scale * r.uniform(0.12, 0.22))
        cy = y - height + size
        colour = _hsv(r.choice([0, 45, 215, 120]), r.uniform(0.6, 1.0), r.uniform(0.5, 1.0))
        if r.random() < 0.5:
            mask = (s.xx - x) ** 2 + (s.yy - cy) ** 2 <= size ** 2
        else:
            mask = s.poly([(x - size, cy - size), (x + size, cy - size), (x + size, cy + size),
                           (x - size, cy + size)])
        rim = ((s.xx - x) ** 2 + (s.yy - cy) ** 2) > (0.7 * size) ** 2
        s.paint(mask, C["sign"], colour, np.where(rim, 1.25, 1.0))


def draw_car(s: Scene, depth: float) -> None:
    r = s.rng
    left, right = s.road
    x, y = s.ground_point(depth, r.uniform(-left * 0.7, right * 0.7))
    width = depth * s.w * r.uniform(0.28, 0.42)
    height = width * r.uniform(0.55, 0.8)
    body = s.any_colour()
    top, waist = y - height, y - height * r.uniform(0.45, 0.6)
    inset = width * r.uniform(0.1, 0.2)
    cabin = s.poly([(x - width / 2, waist), (x + width / 2, waist), (x + width / 2 - inset, top),
                    (x - width / 2 + inset, top)])
    lower = s.poly([(x - width / 2, y - height * 0.12), (x + width / 2, y - height * 0.12),
                    (x + width / 2, waist), (x - width / 2, waist)])
    glow = 1 + 0.25 * np.clip(1 - (s.yy - top) / max(height, 1), 0, 1)    # roof highlight
    s.paint(cabin | lower, C["car"], body, glow * (1 + 0.03 * s.grain()))
    glass = s.poly([(x - width / 2 + inset * 1.3, waist - height * 0.04),
                    (x + width / 2 - inset * 1.3, waist - height * 0.04),
                    (x + width / 2 - inset * 1.6, top + height * 0.06),
                    (x - width / 2 + inset * 1.6, top + height * 0.06)])
    s.paint(glass, C["car"], _hsv(210, 0.2, r.uniform(0.15, 0.45)), 1 + 0.1 * s.noise(4))
    for wx in (x - width * 0.35, x + width * 0.35):
        wheel = s.poly([(wx - width * 0.12, y), (wx + width * 0.12, y),
                        (wx + width * 0.12, y - height * 0.2), (wx - width * 0.12, y - height * 0.2)])
        s.paint(wheel, C["car"], _hsv(0, 0, r.uniform(0.05, 0.2)))
        light = s.poly([(wx - width * 0.1, waist + height * 0.08), (wx + width * 0.1, waist + height * 0.08),
                        (wx + width * 0.1, waist + height * 0.18), (wx - width * 0.1, waist + height * 0.18)])
        s.paint(light, C["car"], _hsv(r.uniform(-10, 25), 0.9, 0.85))


def _person(s: Scene, x: float, y: float, height: float, cls: int) -> None:
    r = s.rng
    skin = _hsv(r.uniform(15, 35), r.uniform(0.25, 0.6), r.uniform(0.35, 0.95))
    shirt, trousers = s.any_colour(), s.any_colour()
    half = height * r.uniform(0.11, 0.15)
    leg = max(0.5, height * 0.05)
    for lx in (x - half * 0.5, x + half * 0.5):
        s.paint(s.poly([(lx - leg, y), (lx + leg, y), (lx + leg, y - height * 0.47),
                        (lx - leg, y - height * 0.47)]), cls, trousers)
    s.paint(s.poly([(x - half, y - height * 0.45), (x + half, y - height * 0.45),
                    (x + half * 0.9, y - height * 0.82), (x - half * 0.9, y - height * 0.82)]),
            cls, shirt, 1 + 0.05 * s.grain())
    head = (s.xx - x) ** 2 + (s.yy - (y - height * 0.9)) ** 2 <= (height * 0.09) ** 2
    s.paint(head, cls, skin)


def draw_pedestrian(s: Scene, depth: float) -> None:
    r = s.rng
    side = r.choice([-1, 1])
    i = (side + 1) // 2
    x, y = s.ground_point(depth, side * r.uniform(s.road[i] * 1.1, s.walk[i] * 0.9))
    _person(s, x, y, depth * (s.h - s.horizon) * r.uniform(0.9, 1.3), C["pedestrian"])


def draw_bicyclist(s: Scene, depth: float) -> None:
    r = s.rng
    side = r.choice([-1, 1])
    x, y = s.ground_point(depth, side * s.road[(side + 1) // 2] * r.uniform(0.6, 0.9))
    height = depth * (s.h - s.horizon) * r.uniform(0.9, 1.3)
    wheel_r = height * 0.2
    canvas = np.zeros((s.h, s.w), np.uint8)
    thickness = max(1, int(round(wheel_r * 0.25)))
    for wx in (x - wheel_r * 1.3, x + wheel_r * 1.3):
        cv2.circle(canvas, (int(round(wx)), int(round(y - wheel_r))), max(1, int(round(wheel_r))),
                   1, thickness)
    cv2.line(canvas, (int(round(x - wheel_r * 1.3)), int(round(y - wheel_r))),
             (int(round(x)), int(round(y - height * 0.5))), 1, thickness)
    cv2.line(canvas, (int(round(x + wheel_r * 1.3)), int(round(y - wheel_r))),
             (int(round(x)), int(round(y - height * 0.5))), 1, thickness)
    s.paint(canvas.astype(bool), C["bicyclist"], s.grey_colour(0.05, 0.5))
    _person(s, x, y - wheel_r, height * 0.85, C["bicyclist"])


def draw_void(s: Scene) -> None:
    r = s.rng
    cx, cy = r.uniform(0, s.w), r.uniform(s.horizon, s.h)
    size = s.h * r.uniform(0.02, 0.06)
    angles = np.sort(r.uniform(0, 2 * np.pi, size=6))
    points = [(cx + size * np.cos(a) * r.uniform(0.5, 1), cy + size * np.sin(a) * r.uniform(0.5, 1))
              for a in angles]
    s.paint(s.poly(points), CAMVID_VOID, s.any_colour(), 1 + 0.1 * s.grain())


def apply_lighting(s: Scene) -> np.ndarray:
    r = s.rng
    img = s.img
    for _ in range(r.integers(0, 3)):   # cast shadows on the ground: labels unchanged
        x0, x1 = np.sort(r.uniform(-0.3, 1.3, size=2)) * s.w
        pts = [(x0, s.horizon + 2), (x1, s.horizon + 2), (x1 + r.uniform(-1, 1) * s.w, s.h),
               (x0 + r.uniform(-1, 1) * s.w, s.h)]
        img = np.where(s.poly(pts)[..., None], img * r.uniform(0.55, 0.8), img)
    img = img * (1 + r.uniform(-0.3, 0.3) * (s.xx / s.w - 0.5))[..., None]
    img = img * r.uniform(0.65, 1.25) * r.uniform(0.9, 1.1, size=3).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=0.6)
    img = img + r.uniform(2, 8) * r.standard_normal(img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, height: int, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 RGB (H, W, 3), uint8 CamVid label (H, W) with 0..10 and 11 = void)."""
    s = Scene(rng, height, width)
    draw_sky(s)
    draw_sidewalks(s)
    draw_facades(s)
    draw_road(s)
    if rng.random() < 0.6:
        draw_fence(s)
    objects = ([(draw_tree, rng.uniform(0.15, 1.0)) for _ in range(rng.integers(2, 7))]
               + [(draw_pole, rng.uniform(0.2, 1.0)) for _ in range(rng.integers(1, 4))]
               + [(draw_car, rng.uniform(0.15, 0.95)) for _ in range(rng.integers(0, 4))]
               + [(draw_pedestrian, rng.uniform(0.2, 1.0)) for _ in range(rng.integers(0, 4))]
               + [(draw_bicyclist, rng.uniform(0.25, 1.0)) for _ in range(rng.integers(0, 3))])
    for draw, depth in sorted(objects, key=lambda item: item[1]):   # far objects first
        draw(s, depth)
    for _ in range(rng.integers(0, 3)):
        draw_void(s)
    return apply_lighting(s), s.lab
