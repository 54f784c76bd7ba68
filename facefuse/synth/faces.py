"""Procedural face renderer: identities, per-image nuisances and a batched numpy rasteriser.

A face lives in a "face frame" whose units are pixels of the 112x112 ArcFace-aligned crop of an
average frontal face, so the average identity's five landmarks are the ArcFace template. An
identity fixes geometry, colours and a skin texture; a nuisance record (one per image) fixes pose,
expression, lighting, occlusion and background. Features are placed on a head ellipsoid and
rotated by yaw, pitch and roll, which gives the posed face frame; a similarity transform (complex
``a``, ``b``: ``pixel = a * q + b``) maps the posed frame onto the output image. Every shape is a
soft-edged signed-distance primitive evaluated for a whole batch at once, each on the union of
its bounding boxes over the batch, so rendering costs a few milliseconds per image in numpy.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from facefuse.data import ARCFACE_TEMPLATE

logger = logging.getLogger(__name__)

Params = dict[str, np.ndarray]

CX = 56.0  # head centre x in the face frame (the template is symmetric about it)
CY = 62.0  # head (ellipsoid) centre y

# Continuous identity parameters: name -> (mean, std at identity_spread=1, min, max). Their means
# put the five landmarks on the ArcFace template.
GEOMETRY: dict[str, tuple[float, float, float, float]] = {
    "head_rx": (40.0, 2.6, 33.0, 47.0),
    "skull_ry": (52.0, 2.0, 46.0, 58.0),
    "face_ry": (45.0, 2.4, 39.0, 51.0),
    "taper": (0.28, 0.09, 0.05, 0.5),
    "eye_sep": (35.2, 2.4, 29.0, 41.0),
    "eye_y": (51.6, 1.8, 46.0, 57.0),
    "eye_w": (6.6, 0.75, 4.8, 8.6),
    "eye_h": (3.3, 0.5, 2.2, 4.6),
    "eye_tilt": (0.0, 0.09, -0.25, 0.25),
    "iris_r": (2.7, 0.35, 1.9, 3.6),
    "brow_gap": (8.5, 1.4, 5.0, 12.5),
    "brow_len": (8.6, 1.2, 5.5, 12.0),
    "brow_thick": (1.7, 0.45, 0.8, 3.0),
    "brow_tilt": (0.0, 0.12, -0.35, 0.35),
    "brow_arch": (1.0, 0.6, -0.5, 2.5),
    "nose_y": (71.7, 1.9, 66.0, 77.0),
    "nose_w": (5.4, 0.8, 3.6, 7.6),
    "nose_prot": (14.0, 2.2, 8.0, 20.0),
    "nose_tip_r": (3.4, 0.55, 2.2, 5.0),
    "mouth_y": (92.3, 1.9, 87.0, 97.0),
    "mouth_w": (14.6, 1.5, 10.5, 18.5),
    "lip_up": (2.1, 0.45, 1.0, 3.4),
    "lip_lo": (2.7, 0.55, 1.3, 4.2),
    "hair_volume": (4.0, 2.8, 0.0, 11.0),
    "hairline": (29.0, 4.5, 18.0, 40.0),
    "hair_long": (0.35, 0.35, 0.0, 1.0),
    "hair_wave": (0.5, 0.25, 0.1, 1.0),
    "part": (0.0, 9.0, -16.0, 16.0),
    "blush": (0.12, 0.08, 0.0, 0.35),
    "recede": (0.5, 0.3, 0.0, 1.0),
}
# the geometric keys that an identity's age drift moves (in units of their std)
DRIFT_KEYS = ("head_rx", "face_ry", "taper", "eye_sep", "eye_y", "eye_w", "eye_h", "brow_gap", "brow_len",
              "nose_y", "nose_w", "mouth_y", "mouth_w", "lip_up", "lip_lo", "hair_volume")

SKIN_TONES = np.array([[238, 205, 182], [214, 168, 135], [188, 138, 100], [150, 102, 70], [100, 68, 48]],
                      np.float32)
HAIR_COLOURS = np.array([[28, 24, 22], [62, 42, 30], [105, 70, 45], [190, 158, 105], [140, 66, 34],
                         [160, 158, 155]], np.float32)
HAIR_P = np.array([0.32, 0.26, 0.17, 0.12, 0.07, 0.06])
EYE_COLOURS = np.array([[80, 50, 30], [115, 92, 50], [75, 110, 70], [70, 105, 150], [105, 115, 125]], np.float32)
N_MOLES = 3
N_WAVES = 4


def _clipped(rng: np.random.Generator, key: str, spread: float) -> float:
    mean, std, lo, hi = GEOMETRY[key]
    return float(np.clip(mean + spread * std * rng.standard_normal(), lo, hi))


def sample_identity(seed: int, identity_id: int, spread: float = 1.0) -> Params:
    """Returns the parameters of one identity, a pure function of (seed, identity_id, spread).

    ``spread`` scales how far identities stray from the average face (geometry and colours): lower
    makes identities more alike and the benchmark harder.
    """
    rng = np.random.default_rng([seed, 1, identity_id])
    p: Params = {k: np.float32(_clipped(rng, k, spread)) for k in GEOMETRY}
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(min(tone, len(SKIN_TONES) - 2))
    skin = SKIN_TONES[i] + (tone - i) * (SKIN_TONES[i + 1] - SKIN_TONES[i]) + rng.normal(0, 7, 3)
    mean_skin = SKIN_TONES[1]
    p["skin"] = (mean_skin + spread * (skin - mean_skin)).astype(np.float32)
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_P)] + rng.normal(0, 10, 3)
    p["hair"] = np.clip(hair, 5, 250).astype(np.float32)
    p["eye"] = np.clip(EYE_COLOURS[rng.integers(len(EYE_COLOURS))] + rng.normal(0, 10, 3), 5, 250).astype(np.float32)
    p["lip"] = np.clip(p["skin"] * np.array([0.82, 0.55, 0.55]) + rng.normal(0, 8, 3), 5, 250).astype(np.float32)
    p["bald"] = np.float32(rng.random() < 0.06)
    p["beard"] = np.float32(rng.uniform(0.35, 0.85) if rng.random() < 0.2 else 0.0)
    p["moustache"] = np.float32(rng.uniform(0.5, 0.95) if rng.random() < 0.22 else 0.0)
    p["glasses"] = np.float32(rng.random() < 0.12)
    p["glasses_r"] = np.float32(rng.uniform(8.0, 10.5))
    p["glasses_colour"] = rng.uniform(10, 120, 3).astype(np.float32)
    present = rng.random(N_MOLES) < 0.4
    p["moles"] = np.stack([rng.uniform(30, 82, N_MOLES), rng.uniform(42, 102, N_MOLES),
                           rng.uniform(0.7, 1.5, N_MOLES) * present], axis=1).astype(np.float32)
    angle = rng.uniform(0, np.pi, N_WAVES)
    freq = rng.uniform(0.06, 0.22, N_WAVES)
    p["waves"] = np.stack([freq * np.cos(angle), freq * np.sin(angle), rng.uniform(0, 2 * np.pi, N_WAVES),
                           rng.uniform(0.012, 0.035, N_WAVES) * spread], axis=1).astype(np.float32)
    p["hair_phase"] = np.float32(rng.uniform(0, 2 * np.pi))
    p["drift"] = rng.standard_normal(len(DRIFT_KEYS)).astype(np.float32)
    return p


def age_identity(p: Params, age: float, drift: float = 1.0) -> Params:
    """Returns the identity as it looks at ``age`` in [0, 1] (0 = as sampled).

    Ageing greys and recedes hair, adds wrinkles, thins lips and brows, and moves the geometry along
    the identity's own drift direction by ``drift * age`` standard deviations.
    """
    if age <= 0:
        return dict(p, wrinkles=np.float32(0.0))
    q = dict(p)
    for key, d in zip(DRIFT_KEYS, p["drift"]):
        mean, std, lo, hi = GEOMETRY[key]
        q[key] = np.float32(np.clip(p[key] + drift * age * std * d, lo, hi))
    grey = np.clip((age - 0.35) * 1.4, 0, 1)
    q["hair"] = (p["hair"] + grey * (np.array([175, 173, 170], np.float32) - p["hair"])).astype(np.float32)
    q["hairline"] = np.float32(p["hairline"] - 9 * age * p["recede"])
    q["taper"] = np.float32(max(0.02, p["taper"] - 0.1 * age))
    q["eye_h"] = np.float32(p["eye_h"] * (1 - 0.18 * age))
    q["lip_up"] = np.float32(p["lip_up"] * (1 - 0.3 * age))
    q["brow_thick"] = np.float32(p["brow_thick"] * (1 - 0.25 * age))
    q["skin"] = (p["skin"] * (1 - 0.07 * age)).astype(np.float32)
    q["wrinkles"] = np.float32(np.clip(age * 1.2, 0, 1))
    return q


def blend_identities(a: Params, b: Params, t: float) -> Params:
    """Returns a look-alike of ``a``: continuous parameters moved a fraction ``t`` towards ``b``.

    Hair colour, baldness, beard and glasses stay those of ``a`` (what makes look-alikes hard
    impostors); moles come from ``b``.
    """
    q = dict(a)
    for key in GEOMETRY:
        q[key] = np.float32((1 - t) * a[key] + t * b[key])
    for key in ("skin", "eye", "lip", "waves"):
        q[key] = ((1 - t) * a[key] + t * b[key]).astype(np.float32)
    q["moles"] = b["moles"]
    return q


def sample_nuisance(rng: np.random.Generator, strength: float = 1.0, yaw: Optional[float] = None,
                    yaw_sd: float = 14.0, age: float = 0.0, occlusion_p: float = 0.2) -> Params:
    """Returns one image's nuisance parameters (pose, expression, lighting, occlusion, background).

    ``strength`` scales every nuisance; ``yaw`` (degrees) fixes the yaw, else it is drawn from
    N(0, yaw_sd * strength) clipped to +-60. ``age`` is recorded for the caller's ageing.
    """
    s = strength
    if yaw is None:
        yaw = float(np.clip(rng.normal(0, yaw_sd * s), -60, 60))
    n: Params = {
        "yaw": np.float32(np.radians(yaw)),
        "pitch": np.float32(np.radians(np.clip(rng.normal(0, 7 * s), -20, 20))),
        "roll": np.float32(np.radians(np.clip(rng.normal(0, 6 * s), -25, 25))),
        "smile": np.float32(np.clip(rng.normal(0.15, 0.45 * s), -0.5, 1.0)),
        "mouth_open": np.float32(np.clip(abs(rng.normal(0, 0.4 * s)) - 0.15, 0, 1)),
        "eye_open": np.float32(1 - np.clip(abs(rng.normal(0, 0.28 * s)), 0, 0.85)),
        "brow_raise": np.float32(rng.normal(0, 1.3 * s)),
        "gaze": rng.normal(0, 0.25 * s, 2).astype(np.float32),
        "light": np.array([rng.normal(0, 0.7 * s), rng.normal(-0.3, 0.45 * s), 1.0], np.float32),
        "diffuse": np.float32(rng.uniform(0.15, 0.15 + 0.5 * s)),
        "tint": np.float32(rng.normal(0, 0.05 * s)),
        "brightness": np.float32(rng.normal(0, 14 * s)),
        "contrast": np.float32(np.exp(rng.normal(0, 0.14 * s))),
        "bg": rng.uniform(20, 235, (2, 3)).astype(np.float32),
        "bg_angle": np.float32(rng.uniform(0, 2 * np.pi)),
        "bg_blob": np.array([rng.uniform(-40, 150), rng.uniform(-40, 150), rng.uniform(15, 50),
                             rng.uniform(-60, 60)], np.float32),
        "clothes": rng.uniform(15, 230, 3).astype(np.float32),
        "occ": np.float32(rng.random() < occlusion_p * min(1.0, s)),
        "occ_geom": np.array([rng.uniform(25, 87), rng.uniform(35, 110), rng.uniform(5, 13), rng.uniform(3, 9),
                              rng.uniform(0, np.pi)], np.float32),
        "occ_colour": rng.uniform(10, 245, 3).astype(np.float32),
        "age": np.float32(age),
    }
    return n


def perturb_nuisance(n: Params, rng: np.random.Generator, amount: float = 1.0) -> Params:
    """Returns ``n`` with small changes, as between consecutive frames of one video."""
    q = dict(n)
    q["yaw"] = np.float32(n["yaw"] + np.radians(rng.normal(0, 3 * amount)))
    q["pitch"] = np.float32(n["pitch"] + np.radians(rng.normal(0, 2 * amount)))
    q["roll"] = np.float32(n["roll"] + np.radians(rng.normal(0, 2 * amount)))
    q["smile"] = np.float32(np.clip(n["smile"] + rng.normal(0, 0.1 * amount), -0.5, 1))
    q["mouth_open"] = np.float32(np.clip(n["mouth_open"] + rng.normal(0, 0.08 * amount), 0, 1))
    q["eye_open"] = np.float32(np.clip(n["eye_open"] + rng.normal(0, 0.08 * amount), 0.15, 1))
    q["gaze"] = (n["gaze"] + rng.normal(0, 0.05 * amount, 2)).astype(np.float32)
    q["brightness"] = np.float32(n["brightness"] + rng.normal(0, 3 * amount))
    return q


def stack(records: list[Params]) -> Params:
    """Returns the batch form of a list of parameter records: each key stacked on a leading axis."""
    return {k: np.stack([np.asarray(r[k], np.float32) for r in records]) for k in records[0]}


# ----------------------------------------------------------------------------------------------
# pose


def _surface_z(x: np.ndarray, y: np.ndarray, ident: Params) -> np.ndarray:
    rz = 0.95 * ident["head_rx"]
    u = (x - CX) / (1.08 * ident["head_rx"])
    v = (y - CY) / (1.12 * ident["skull_ry"])
    return rz * np.sqrt(np.clip(1 - u * u - v * v, 0.04, 1))


def _project(x: np.ndarray, y: np.ndarray, dz: np.ndarray | float, ident: Params, nuis: Params
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns posed (x, y, depth) of face-frame points [B, ...] lifted onto the head ellipsoid."""
    extra = (slice(None),) + (None,) * (np.ndim(x) - 1)
    yaw, pitch, roll = nuis["yaw"][extra], nuis["pitch"][extra], nuis["roll"][extra]
    z = _surface_z(x, y, {k: ident[k][extra] for k in ("head_rx", "skull_ry")}) + dz
    x1 = (x - CX) * np.cos(yaw) + z * np.sin(yaw)
    z1 = -(x - CX) * np.sin(yaw) + z * np.cos(yaw)
    y1 = (y - CY) * np.cos(pitch) - z1 * np.sin(pitch)
    z2 = (y - CY) * np.sin(pitch) + z1 * np.cos(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    return CX + x1 * cr - y1 * sr, CY + x1 * sr + y1 * cr, z2


def pose_geometry(ident: Params, nuis: Params) -> dict[str, np.ndarray]:
    """Returns posed positions [B, ...] of the features, including the 5 landmarks [B, 5, 2]."""
    b = ident["eye_y"].shape[0]
    side = np.array([-1.0, 1.0], np.float32)[None, :]  # image-left, image-right
    smile = nuis["smile"][:, None]
    g: dict[str, np.ndarray] = {}
    ex = CX + side * ident["eye_sep"][:, None] / 2
    ey = np.repeat(ident["eye_y"][:, None], 2, axis=1)
    g["eye_x"], g["eye_y"], g["eye_z"] = _project(ex, ey, -3.0, ident, nuis)
    g["brow_x"], g["brow_y"], g["brow_z"] = _project(
        ex + side * 0.6, ey - ident["brow_gap"][:, None] - nuis["brow_raise"][:, None], -1.0, ident, nuis)
    nose = np.stack([np.full(b, CX, np.float32), ident["nose_y"]], axis=1)
    g["nose_x"], g["nose_y"], g["nose_z"] = _project(nose[:, :1], nose[:, 1:], ident["nose_prot"][:, None],
                                                     ident, nuis)
    nx = CX + side * ident["nose_w"][:, None]
    g["nostril_x"], g["nostril_y"], g["nostril_z"] = _project(
        nx, ident["nose_y"][:, None] + 2.2, 0.55 * ident["nose_prot"][:, None], ident, nuis)
    mx = CX + side * ident["mouth_w"][:, None]
    my = ident["mouth_y"][:, None] - 3.0 * smile
    g["mouth_x"], g["mouth_y"], g["mouth_z"] = _project(mx, my, 1.0, ident, nuis)
    mc = np.stack([np.full(b, CX, np.float32), ident["mouth_y"]], axis=1)
    g["mouthc_x"], g["mouthc_y"], _ = _project(mc[:, :1], mc[:, 1:], 2.5, ident, nuis)
    moles = ident["moles"]
    g["mole_x"], g["mole_y"], g["mole_z"] = _project(moles[:, :, 0], moles[:, :, 1], 0.0, ident, nuis)
    g["landmarks"] = np.stack([
        np.stack([g["eye_x"][:, 0], g["eye_y"][:, 0]], 1), np.stack([g["eye_x"][:, 1], g["eye_y"][:, 1]], 1),
        np.stack([g["nose_x"][:, 0], g["nose_y"][:, 0]], 1),
        np.stack([g["mouth_x"][:, 0], g["mouth_y"][:, 0]], 1), np.stack([g["mouth_x"][:, 1], g["mouth_y"][:, 1]], 1),
    ], axis=1).astype(np.float32)
    return g


# ----------------------------------------------------------------------------------------------
# transforms (complex similarity: pixel = a * q + b)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns complex (a [B], b [B]) of the least-squares similarity mapping src [B,5,2] onto dst [5,2]."""
    zs = src[..., 0].astype(np.complex128) + 1j * src[..., 1]
    zd = (dst[..., 0].astype(np.complex128) + 1j * dst[..., 1])
    zd = np.broadcast_to(zd, zs.shape)
    ms, md = zs.mean(-1, keepdims=True), zd.mean(-1, keepdims=True)
    a = (np.conj(zs - ms) * (zd - md)).sum(-1) / (np.abs(zs - ms) ** 2).sum(-1)
    return a, (md - a[:, None] * ms)[:, 0]


def apply_similarity(a: np.ndarray, b: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Returns points [B, K, 2] mapped by the similarity (a, b)."""
    z = a[:, None] * (pts[..., 0] + 1j * pts[..., 1]) + b[:, None]
    return np.stack([z.real, z.imag], -1).astype(np.float32)


def aligned_transform(landmarks: np.ndarray, rng_jitter: Optional[np.ndarray] = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Returns the similarity placing posed landmarks [B,5,2] on the ArcFace template.

    ``rng_jitter`` [B, 4] (dx, dy in pixels, log-scale, angle in radians) perturbs it the way a
    detector's landmark noise perturbs a real aligned crop.
    """
    a, b = fit_similarity(landmarks, np.asarray(ARCFACE_TEMPLATE, np.float64))
    if rng_jitter is not None:
        j = rng_jitter.astype(np.float64)
        rot = np.exp(j[:, 2] + 1j * j[:, 3])
        centre = 56.0 + 66.0j
        a, b = rot * a, rot * (b - centre) + centre + j[:, 0] + 1j * j[:, 1]
    return a, b


# ----------------------------------------------------------------------------------------------
# rasterisation
#
# Every shape below is a function of the posed face-frame coordinates (U, V) of a pixel, and U, V
# are affine in the pixel coordinates. So any linear function of (U, V) is a broadcast sum of a row
# and a column vector (one full-size operation), and sines and Gaussians of linear functions
# separate the same way; this keeps rendering at a few numpy passes per shape.

Window = tuple[slice, slice]


def _c(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(-1, 1, 1)


class _Canvas:
    """A batch of float planar-RGB images and the similarity (a, b) from the posed face frame to pixels."""

    def __init__(self, a: np.ndarray, b: np.ndarray, size: int, img: Optional[np.ndarray] = None,
                 fg: Optional[np.ndarray] = None, tmp: Optional[np.ndarray] = None) -> None:
        self.size = size
        self.a, self.b = a, b
        self.px = np.abs(a).astype(np.float32)  # pixels per face-frame unit
        inv = 1.0 / a
        self.ir, self.ii = inv.real.astype(np.float32), inv.imag.astype(np.float32)
        n = len(a)
        self.img = np.zeros((3, n, size, size), np.float32) if img is None else img  # planar RGB
        self.fg = np.zeros((n, size, size), np.float32) if fg is None else fg  # head coverage
        self._tmp = np.empty((n, size, size), np.float32) if tmp is None else tmp

    def part(self, i: int) -> "_Canvas":
        """Returns a canvas that draws into image ``i`` only (sharing memory)."""
        s = slice(i, i + 1)
        return _Canvas(self.a[s], self.b[s], self.size, self.img[:, s], self.fg[s], self._tmp[s])

    def full(self) -> Window:
        return slice(0, self.size), slice(0, self.size)

    def window(self, x: np.ndarray, y: np.ndarray, r: np.ndarray | float) -> Optional[Window]:
        """Returns the pixel window covering discs (x, y, r) [B] of the face frame, or None if empty."""
        z = self.a * (np.asarray(x) + 1j * np.asarray(y)) + self.b
        rp = np.asarray(r) * self.px + 2
        x0 = int(np.floor(max(0, (z.real - rp).min())))
        x1 = int(np.ceil(min(self.size, (z.real + rp).max() + 1)))
        y0 = int(np.floor(max(0, (z.imag - rp).min())))
        y1 = int(np.ceil(min(self.size, (z.imag + rp).max() + 1)))
        if x1 <= x0 or y1 <= y0:
            return None
        return slice(y0, y1), slice(x0, x1)

    def _axes(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = win
        x = np.arange(xs.start, xs.stop, dtype=np.float32)[None, None, :] - _c(self.b.real)
        y = np.arange(ys.start, ys.stop, dtype=np.float32)[None, :, None] - _c(self.b.imag)
        return x, y  # [B,1,w], [B,h,1] pixel offsets from the face-frame origin

    def _coeffs(self, fu: np.ndarray | float, fv: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        # U = ir*x - ii*y, V = ii*x + ir*y  =>  fu*U + fv*V = al*x + be*y
        fu, fv = np.asarray(fu, np.float32), np.asarray(fv, np.float32)
        return _c(fu * self.ir + fv * self.ii), _c(fv * self.ir - fu * self.ii)

    def lin(self, win: Window, fu: np.ndarray | float, fv: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
        """Returns fu * U + fv * V + c over the window [B,h,w] (parameters [B] or scalars)."""
        x, y = self._axes(win)
        al, be = self._coeffs(fu, fv)
        return (al * x) + (be * y + _c(np.broadcast_to(c, self.a.shape)))

    def sin_lin(self, win: Window, fu: np.ndarray | float, fv: np.ndarray | float, c: np.ndarray | float
                ) -> np.ndarray:
        """Returns sin(fu * U + fv * V + c) over the window."""
        x, y = self._axes(win)
        al, be = self._coeffs(fu, fv)
        ax, by = al * x, be * y + _c(np.broadcast_to(c, self.a.shape))
        return np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by)

    def gauss(self, win: Window, cx: np.ndarray, cy: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Returns exp(-|q - c|^2 / (2 sigma^2)) over the window, q the face-frame point of each pixel."""
        x, y = self._axes(win)
        z = self.a * (cx + 1j * cy)  # centre relative to b, in pixels
        k = _c(1.0 / (2 * (sigma * self.px) ** 2))
        return np.exp(-k * (x - _c(z.real)) ** 2) * np.exp(-k * (y - _c(z.imag)) ** 2)

    def ellipse(self, win: Window, cx: np.ndarray, cy: np.ndarray, ax: np.ndarray, ay: np.ndarray,
                angle: np.ndarray | float, soft: float = 0.7) -> np.ndarray:
        """Returns the antialiased coverage [B,h,w] of rotated ellipses (parameters [B])."""
        ca = np.cos(angle) * np.ones_like(cx)
        sa = np.sin(angle) * np.ones_like(cx)
        x = self.lin(win, ca / ax, sa / ax, -(cx * ca + cy * sa) / ax)
        y = self.lin(win, -sa / ay, ca / ay, (cx * sa - cy * ca) / ay)
        x *= x
        y *= y
        x += y
        np.sqrt(x, out=x)
        x -= 1
        x *= _c(-np.sqrt(ax * ay) * self.px / soft)  # about pixels outside the edge, negated
        x += 0.5
        return np.clip(x, 0, 1, out=x)

    def segment(self, win: Window, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray,
                width: np.ndarray | float) -> np.ndarray:
        """Returns the coverage [B,h,w] of thick segments from (x0, y0) to (x1, y1) (parameters [B])."""
        dx, dy = x1 - x0, y1 - y0
        n2 = dx * dx + dy * dy + 1e-6
        t = np.clip(self.lin(win, dx / n2, dy / n2, -(x0 * dx + y0 * dy) / n2), 0, 1)
        ex = self.lin(win, 1.0, 0.0, -x0) - t * _c(dx)
        ey = self.lin(win, 0.0, 1.0, -y0) - t * _c(dy)
        d = np.sqrt(ex * ex + ey * ey) - _c(np.broadcast_to(width, x0.shape))
        return np.clip(0.5 - d * _c(self.px / 0.8), 0, 1)

    def blend(self, win: Window, alpha: np.ndarray, colour: np.ndarray, mod: Optional[np.ndarray] = None,
              fg: bool = False) -> None:
        """Composites ``colour`` [B,3] (times ``mod`` [B,h,w] if given) with ``alpha`` [B,h,w] into the window."""
        ys, xs = win
        tmp = self._tmp[:, : alpha.shape[1], : alpha.shape[2]]
        colour = np.broadcast_to(np.asarray(colour, np.float32), (len(self.a), 3))
        for ch in range(3):
            view = self.img[ch][:, ys, xs]
            if mod is None:
                np.subtract(_c(colour[:, ch]), view, out=tmp)
            else:
                np.multiply(_c(colour[:, ch]), mod, out=tmp)
                tmp -= view
            tmp *= alpha
            view += tmp
        if fg:
            f = self.fg[:, ys, xs]
            np.maximum(f, alpha, out=f)


def _const(B: int, v: float) -> np.ndarray:
    return np.full(B, v, np.float32)


def render(ident: Params, nuis: Params, a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """Returns uint8 RGB images [B, size, size, 3] of faces posed by ``nuis`` through the similarity (a, b)."""
    B = len(a)
    cv = _Canvas(np.asarray(a, np.complex128), np.asarray(b, np.complex128), size)
    FULL = cv.full()
    g = pose_geometry(ident, nuis)
    yaw, roll = nuis["yaw"], nuis["roll"]
    cyaw, syaw = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(roll), np.sin(roll)
    skin, hair = ident["skin"], ident["hair"]
    bald = ident["bald"]
    hair_top = hair * (1 - bald[:, None]) + skin * 0.93 * bald[:, None]
    rx_head = ident["head_rx"]

    # background: a linear gradient between two colours plus one soft glow
    ang = nuis["bg_angle"]
    t = np.clip(cv.lin(FULL, np.cos(ang) / 160, np.sin(ang) / 160, 0.5 - (CX * np.cos(ang) + CY * np.sin(ang)) / 160),
                0, 1)
    blob = nuis["bg_blob"]
    glow = cv.gauss(FULL, blob[:, 0], blob[:, 1], blob[:, 2]) * _c(blob[:, 3])
    c0, c1 = nuis["bg"][:, 0], nuis["bg"][:, 1]
    for ch in range(3):
        cv.img[ch] = t * _c(c1[:, ch] - c0[:, ch]) + glow + _c(c0[:, ch])

    # shoulders and neck
    chin_y = CY + 2 + ident["face_ry"]
    cv.blend(FULL, cv.ellipse(FULL, CX + 6 * syaw, chin_y + 44, _const(B, 75), _const(B, 40), roll), nuis["clothes"])
    neck = cv.segment(FULL, CX + 4 * syaw, chin_y - 15, CX + 6 * syaw, chin_y + 25, 0.42 * rx_head)
    cv.blend(FULL, neck, skin * 0.78, fg=True)

    # hair behind the head, and long hair down the sides
    vol = ident["hair_volume"] * (1 - bald)
    hx = CX - 3 * syaw
    head_back = cv.ellipse(FULL, hx, _const(B, CY - 3), rx_head + vol, ident["skull_ry"] + vol, roll)
    long_hair = cv.ellipse(FULL, hx, _const(B, CY + 25), rx_head + vol + 3, ident["skull_ry"] + 8, roll)
    long_hair *= _c(ident["hair_long"] * (1 - bald))
    streak = cv.sin_lin(FULL, ident["hair_wave"] * 1.3, 0.15, ident["hair_phase"])
    streak *= 0.1
    streak += 1
    cv.blend(FULL, np.maximum(head_back, long_hair), hair_top, mod=streak, fg=True)

    # face skin: an oval narrowing towards the chin, shifted and narrowed by yaw
    fcx = CX + 0.33 * rx_head * syaw
    fcy = _const(B, CY + 2)
    frx = rx_head * (0.8 + 0.2 * cyaw)
    x = cv.lin(FULL, cr, sr, -(fcx * cr + fcy * sr))
    y = cv.lin(FULL, -sr, cr, fcx * sr - fcy * cr)
    lower = np.clip(y / _c(ident["face_ry"]), 0, 1)
    lower *= lower
    lower *= _c(-ident["taper"])
    lower += 1
    lower *= _c(frx)
    x /= lower
    y /= np.where(y < 0, _c(ident["skull_ry"] - 2), _c(ident["face_ry"]))
    x *= x
    y *= y
    x += y
    r = np.sqrt(x, out=x)
    face = np.clip(0.5 - (r - 1) * _c(0.9 * frx * cv.px / 0.8), 0, 1)
    # identity texture: low-frequency plane waves in roughly unposed face coordinates
    tex = np.ones_like(face)
    w = ident["waves"]
    stretch = 1.0 / np.maximum(cyaw, 0.35)
    for k in range(w.shape[1]):
        tex += cv.sin_lin(FULL, w[:, k, 0] * stretch, w[:, k, 1], w[:, k, 2] - w[:, k, 0] * stretch * (fcx - CX)
                          ) * _c(w[:, k, 3])
    cv.blend(FULL, face, skin, mod=tex, fg=True)
    face_mask = face

    # cheeks
    for s in (0, 1):
        ccx = g["eye_x"][:, s] + (2 * s - 1) * cyaw
        ccy = ident["eye_y"] + 18
        win = cv.window(ccx, ccy, 12)
        if win is not None:
            al = cv.gauss(win, ccx, ccy, _const(B, 5.0)) * _c(ident["blush"]) * face_mask[:, win[0], win[1]]
            cv.blend(win, al, np.array([200, 70, 70], np.float32))

    # moles: random places, so drawn image by image in small windows
    for i, k in zip(*np.nonzero(ident["moles"][:, :, 2] > 0)):
        sub = cv.part(int(i))
        mr = ident["moles"][i:i + 1, k, 2]
        mx, my, mz = g["mole_x"][i:i + 1, k], g["mole_y"][i:i + 1, k], g["mole_z"][i:i + 1, k]
        win = sub.window(mx, my, mr + 1)
        if win is None or mz[0] <= 0:
            continue
        al = sub.ellipse(win, mx, my, mr * max(float(cyaw[i]), 0.3), mr, 0.0) * float(np.clip(mz[0] / 4, 0, 1))
        sub.blend(win, al * face_mask[i:i + 1, win[0], win[1]], skin[i:i + 1] * 0.45)

    # ageing wrinkles: forehead lines and nasolabial folds
    wr = ident.get("wrinkles")
    if wr is not None and wr.any():
        lines = []
        for k in range(3):
            yk = ident["eye_y"] - ident["brow_gap"] - 6 - 3.2 * k
            x0, y0, _ = _project(_const(B, CX - 12), yk, 0.0, ident, nuis)
            x1, y1, _ = _project(_const(B, CX + 12), yk, 0.0, ident, nuis)
            lines.append((x0, y0, x1, y1, 0.3, 0.6))
        for s in (0, 1):
            lines.append((g["nostril_x"][:, s], g["nostril_y"][:, s], g["mouth_x"][:, s] + (2 * s - 1) * 2.5 * cyaw,
                          g["mouth_y"][:, s] + 2, 0.35, 0.62))
        for x0, y0, x1, y1, width, dark in lines:
            win = cv.window((x0 + x1) / 2, (y0 + y1) / 2, 16)
            if win is not None:
                al = cv.segment(win, x0, y0, x1, y1, width) * _c(wr * 0.5)
                cv.blend(win, al * face_mask[:, win[0], win[1]], skin * dark)

    # beard and moustache
    mcx0, mcy0 = g["mouthc_x"][:, 0], g["mouthc_y"][:, 0]
    if ident["beard"].any():
        win = cv.window(mcx0, mcy0 + 4, 40)
        if win is not None:
            below = np.clip(cv.lin(win, -sr, cr, mcx0 * sr - mcy0 * cr + 4) / 3, 0, 1)
            grain = cv.sin_lin(win, 2.1, 1.7, 0.0)
            grain *= 0.15
            grain += 0.85
            cv.blend(win, below * face_mask[:, win[0], win[1]] * _c(ident["beard"]) * grain, hair * 0.9)
    if ident["moustache"].any():
        my = mcy0 - ident["lip_up"] - 2.6
        win = cv.window(mcx0, my, ident["mouth_w"] + 3)
        if win is not None:
            al = cv.ellipse(win, mcx0, my, ident["mouth_w"] * 1.05 * (0.6 + 0.4 * cyaw), _const(B, 2.3), roll)
            cv.blend(win, al * _c(ident["moustache"]), hair * 0.85)

    # nose: bridge shadow on the side away from the light, tip, underside shadow, nostrils
    side = np.where(nuis["light"][:, 0] >= 0, -1.0, 1.0).astype(np.float32)
    bx0, by0, _ = _project(CX + side * 3.0, ident["eye_y"] + 3, 3.0, ident, nuis)
    ncx, ncy = g["nose_x"][:, 0], g["nose_y"][:, 0]
    bx1, by1 = ncx + side * ident["nose_tip_r"] * 0.9, ncy - 1
    win = cv.window((bx0 + bx1) / 2, (by0 + by1) / 2, 18)
    if win is not None:
        al = cv.segment(win, bx0, by0, bx1, by1, 0.9) * _c(0.18 + 0.3 * np.abs(syaw))
        cv.blend(win, al * face_mask[:, win[0], win[1]], skin * 0.55)
    win = cv.window(ncx, ncy + 2, ident["nose_w"] + 5)
    if win is not None:
        under = cv.ellipse(win, ncx, ncy + 2.6, ident["nose_w"] * 1.25 * (0.5 + 0.5 * cyaw), _const(B, 2.0), roll,
                           soft=2.0)
        cv.blend(win, under * 0.3, skin * 0.6)
        tip = cv.ellipse(win, ncx, ncy, ident["nose_tip_r"] * (0.6 + 0.4 * cyaw), ident["nose_tip_r"] * 0.85, roll,
                         soft=2.0)
        cv.blend(win, tip * 0.35, np.minimum(skin * 1.08, 255))
        for s in (0, 1):
            vis = np.clip(g["nostril_z"][:, s] / 3, 0, 1)
            nl = cv.ellipse(win, g["nostril_x"][:, s], g["nostril_y"][:, s], 1.5 * (0.5 + 0.5 * cyaw),
                            _const(B, 0.9), roll + (2 * s - 1) * 0.3)
            cv.blend(win, nl * _c(0.75 * vis), skin * 0.3)

    # mouth: lips in a frame bent by the smile, dark inside when open
    mx0, my0, mx1, my1 = g["mouth_x"][:, 0], g["mouth_y"][:, 0], g["mouth_x"][:, 1], g["mouth_y"][:, 1]
    mcx, mcy = (mx0 + mx1) / 2, (my0 + my1) / 2
    half = np.hypot(mx1 - mx0, my1 - my0) / 2
    mang = np.arctan2(my1 - my0, mx1 - mx0)
    opening = nuis["mouth_open"] * 4.5
    win = cv.window(mcx, mcy, half + 8)
    if win is not None:
        ca, sa = np.cos(mang), np.sin(mang)
        xu = cv.lin(win, ca / half, sa / half, -(mcx * ca + mcy * sa) / half)
        yv = cv.lin(win, -sa, ca, mcx * sa - mcy * ca - opening * 0.3) + _c(3.0 * nuis["smile"]) * (xu * xu)
        ay = np.where(yv < 0, _c(ident["lip_up"] + opening * 0.5), _c(ident["lip_lo"] + opening * 0.5))
        r = np.sqrt(xu * xu + (yv / ay) ** 2)
        cv.blend(win, np.clip(0.5 - (r - 1) * _c(2.5 * cv.px), 0, 1), ident["lip"])
        inner_r = np.sqrt((xu / 0.85) ** 2 + (yv / _c(opening * 0.5 + 0.35)) ** 2)
        inner = np.clip(0.5 - (inner_r - 1) * _c(1.5 * cv.px), 0, 1) * np.clip(_c(0.3 + nuis["mouth_open"] * 3), 0, 1)
        cv.blend(win, inner, np.array([70, 25, 28], np.float32))

    # eyes: socket shade, sclera, iris, pupil, upper lid
    for s in (0, 1):
        ex, ey, ez = g["eye_x"][:, s], g["eye_y"][:, s], g["eye_z"][:, s]
        vis = _c(np.clip(ez / 3, 0, 1))
        fs = np.maximum(np.cos(yaw + (2 * s - 1) * 0.45), 0.12)
        ew = ident["eye_w"] * fs
        eh = np.maximum(ident["eye_h"] * nuis["eye_open"], 0.3)
        tilt = roll + (1 - 2 * s) * ident["eye_tilt"]
        win = cv.window(ex, ey, ident["eye_w"] * 1.8 + 2)
        if win is None:
            continue
        fm = face_mask[:, win[0], win[1]] * vis
        sock = cv.ellipse(win, ex, ey - 0.5, ew * 1.5, ident["eye_h"] * 2.0, tilt, soft=4.0)
        cv.blend(win, sock * 0.22 * fm, skin * 0.6)
        sclera = cv.ellipse(win, ex, ey, ew, eh, tilt) * fm
        cv.blend(win, sclera, np.array([235, 232, 225], np.float32))
        ix = ex + nuis["gaze"][:, 0] * ew * 0.45
        iy = ey + nuis["gaze"][:, 1] * eh * 0.3
        cv.blend(win, cv.ellipse(win, ix, iy, ident["iris_r"] * fs, ident["iris_r"], tilt) * sclera, ident["eye"])
        pupil = cv.ellipse(win, ix, iy, ident["iris_r"] * 0.45 * fs, ident["iris_r"] * 0.45, tilt) * sclera
        cv.blend(win, pupil, np.array([15, 12, 12], np.float32))
        lid = cv.ellipse(win, ex, ey - 0.35, ew * 1.04, eh + 0.7, tilt) - sclera
        above = cv.lin(win, -np.sin(tilt), np.cos(tilt), ex * np.sin(tilt) - ey * np.cos(tilt)) < 0
        cv.blend(win, np.clip(lid, 0, 1) * above * fm * 0.85, skin * 0.35)

    # brows
    for s in (0, 1):
        bx, by, bz = g["brow_x"][:, s], g["brow_y"][:, s], g["brow_z"][:, s]
        fs = np.maximum(np.cos(yaw + (2 * s - 1) * 0.45), 0.12)
        blen = ident["brow_len"] * fs
        win = cv.window(bx, by, ident["brow_len"] + 3)
        if win is None:
            continue
        ang = roll + (2 * s - 1) * ident["brow_tilt"]
        ca, sa = np.cos(ang), np.sin(ang)
        xu = cv.lin(win, ca / blen, sa / blen, -(bx * ca + by * sa) / blen)
        yv = cv.lin(win, -sa, ca, bx * sa - by * ca) + _c(ident["brow_arch"]) * (1 - xu * xu)
        r = np.sqrt(xu * xu + (yv / _c(ident["brow_thick"])) ** 2)
        al = np.clip(0.5 - (r - 1) * _c(ident["brow_thick"] * cv.px), 0, 1) * _c(np.clip(bz / 3, 0, 1) * 0.9)
        cv.blend(win, al * face_mask[:, win[0], win[1]], hair * 0.8)

    # fringe: hair over the forehead above a wavy hairline that drops at the temples
    top = ident["hairline"] - 8 * np.abs(syaw)
    hx0, hy0, _ = _project(CX + ident["part"], top, 0.0, ident, nuis)
    win = cv.window(_const(B, CX), _const(B, CY - 20), ident["skull_ry"] + 12)
    if win is not None:
        xr = cv.lin(win, cr, sr, -(hx0 * cr + hy0 * sr))
        edge = cv.lin(win, sr, -cr, -(hx0 * sr - hy0 * cr))  # = -yr: positive above the hairline
        edge += cv.sin_lin(win, cr * ident["hair_wave"] * 0.5, sr * ident["hair_wave"] * 0.5,
                           ident["hair_phase"] - (hx0 * cr + hy0 * sr) * ident["hair_wave"] * 0.5
                           ) * _c(ident["hair_volume"] * 0.3)
        temple = cv.lin(win, 1 / frx, 0.0, -fcx / frx)
        temple *= temple
        temple *= temple
        edge += temple * 34 - np.abs(xr) * 0.05
        al = np.clip(0.5 + edge / 1.2, 0, 1) * head_back[:, win[0], win[1]] * _c(1 - bald)
        cv.blend(win, al, hair_top, mod=streak[:, win[0], win[1]], fg=True)

    # glasses
    if ident["glasses"].any():
        gr = ident["glasses_r"]
        for s in (0, 1):
            ex, ey, ez = g["eye_x"][:, s], g["eye_y"][:, s], g["eye_z"][:, s]
            fs = np.maximum(np.cos(yaw + (2 * s - 1) * 0.45), 0.12)
            win = cv.window(ex, ey, gr + 2)
            if win is None:
                continue
            outer = cv.ellipse(win, ex, ey + 0.5, gr * fs, gr * 0.78, roll)
            inner = cv.ellipse(win, ex, ey + 0.5, np.maximum(gr * fs - 0.9, 0.2), gr * 0.78 - 0.9, roll)
            vis = _c(np.clip(ez / 2 + 0.5, 0, 1) * ident["glasses"])
            cv.blend(win, (outer - inner) * vis, ident["glasses_colour"])
            cv.blend(win, inner * vis * 0.12, ident["glasses_colour"])
        x0 = g["eye_x"][:, 0] + gr * np.maximum(np.cos(yaw - 0.45), 0.12)
        x1 = g["eye_x"][:, 1] - gr * np.maximum(np.cos(yaw + 0.45), 0.12)
        y0, y1 = g["eye_y"][:, 0], g["eye_y"][:, 1]
        win = cv.window((x0 + x1) / 2, (y0 + y1) / 2, 12)
        if win is not None:
            cv.blend(win, cv.segment(win, x0, y0, x1, y1, 0.5) * _c(ident["glasses"]), ident["glasses_colour"])

    # lighting: Lambertian shading on the head ellipsoid, only where the head is
    light = nuis["light"] / np.linalg.norm(nuis["light"], axis=1, keepdims=True)
    kx, ky = 1 / (1.1 * rx_head), 1 / (1.15 * ident["skull_ry"])
    nx = cv.lin(FULL, kx, 0.0, -CX * kx)
    ny = cv.lin(FULL, 0.0, ky, -CY * ky)
    nz = 1 - nx * nx - ny * ny
    np.clip(nz, 0, 1, out=nz)
    np.sqrt(nz, out=nz)
    lam = cv.lin(FULL, kx * light[:, 0], ky * light[:, 1], -(CX * kx * light[:, 0] + CY * ky * light[:, 1]))
    lam += nz * _c(light[:, 2])
    np.clip(lam, 0, 1, out=lam)
    lam -= 0.75
    lam *= _c(nuis["diffuse"])
    lam *= cv.fg
    lam += 1
    cv.img *= lam[None]

    # occlusion: an object of random colour over part of the face, image by image
    for i in np.nonzero(nuis["occ"] > 0)[0]:
        sub = cv.part(int(i))
        og = nuis["occ_geom"][i:i + 1]
        ox, oy, _ = _project(og[:, 0], og[:, 1], 8.0, {k: ident[k][i:i + 1] for k in ("head_rx", "skull_ry")},
                             {k: nuis[k][i:i + 1] for k in ("yaw", "pitch", "roll")})
        win = sub.window(ox, oy, np.maximum(og[:, 2], og[:, 3]))
        if win is not None:
            sub.blend(win, sub.ellipse(win, ox, oy, og[:, 2], og[:, 3], og[:, 4]), nuis["occ_colour"][i:i + 1])

    # camera: colour temperature, contrast, brightness
    img = cv.img
    img[0] *= _c(1 + nuis["tint"])
    img[2] *= _c(1 - nuis["tint"])
    mean = img.mean(axis=(0, 2, 3))
    img *= _c(nuis["contrast"])[None]
    img += _c(mean * (1 - nuis["contrast"]) + nuis["brightness"] + 0.5)[None]
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 3, 0))
