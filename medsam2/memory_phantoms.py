"""Phantoms that only a memory can segment: identical twins, fading structures, drifting contrast.

On the organ/vessel/lesion phantoms (phantoms.py) every structure has a look of its own, so a model
that finds "the bright tube" on every slice scores well without remembering anything, and nothing
rewards SAM 2's memory. Here it is the other way round:

twins    two structures of identical appearance (same intensity, same cross-section on each slice)
         lie in the same slices; the pair moves, turns about its centre and changes shape along the
         volume. Only the prompt says which one is wanted, and only memory says where it went;
fade     on a few slices a structure's contrast drops to a small fraction and comes back: it is still
         there (and labelled), but barely visible, so it must be carried through by memory;
gap      a structure leaves the slices for a few and comes back (unlabelled while away): a memory
         must still hold it when it returns, and not take its twin instead;
drift    contrast changes along the volume (structure and background), so a far slice looks unlike
         the prompted one;
wide     wider ranges of what another generator might draw: radii, the gap between the twins (down
         to nearly touching), how far the pair turns (up to a full half turn each way), and how much
         of the volume each twin spans (so either may lead or trail).

The twins never touch (their centres stay apart by more than their two radii plus a margin) and
move by a few voxels per slice at most, so a person following them slice by slice never doubts which
is which. Everything is deterministic given the seed; `Phantom.notes` records what was drawn (which
slices fade, where gaps are) so tests and the evaluation can check it.
"""

from __future__ import annotations

import numpy as np

from .phantoms import PHANTOM_LABELS, Phantom, make_phantom

TWIN_LABELS = {"twin_a": 1, "twin_b": 2}
KINDS = ("twins", "fade", "gap", "drift", "long", "wide")
LONG_WINDOW = (7, 10)  # "long": a fade or gap longer than SAM 2's 6 recent memories


def _smooth_curve(rng: np.random.Generator, t: np.ndarray, amplitude: float, waves: float = 1.5) -> np.ndarray:
    """A random smooth function of t in [-1, 1]: a sum of two sinusoids, within +-amplitude."""
    out = np.zeros_like(t)
    for _ in range(2):
        freq = rng.uniform(0.3, waves) * np.pi
        out += rng.uniform(0.3, 0.5) * amplitude * np.sin(freq * t + rng.uniform(0, 2 * np.pi))
    return out


def _extent(rng: np.random.Generator, n: int, min_fraction: float) -> tuple[int, int]:
    """First and last slice of a structure covering at least `min_fraction` of n slices."""
    length = int(rng.integers(int(np.ceil(min_fraction * n)), n + 1))
    start = int(rng.integers(0, n - length + 1))
    return start, start + length - 1


def _window(rng: np.random.Generator, lo: int, hi: int, width: tuple[int, int]) -> list[int]:
    """A run of `width` slices strictly inside [lo, hi] (empty when the structure is too short)."""
    w = int(rng.integers(width[0], width[1] + 1))
    first, last = lo + 3, hi - 3 - w + 1  # keep a few clear slices on both sides
    if last < first:
        return []
    start = int(rng.integers(first, last + 1))
    return list(range(start, start + w))


def make_twins(
    shape: tuple[int, int, int] = (64, 64, 32),
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5),
    fade: bool = False,
    gap: bool = False,
    drift: bool = False,
    noise_hu: float | None = None,
    window: tuple[int, int] = (2, 4),
    wide: bool = False,
) -> Phantom:
    """Two identical-looking structures (labels twin_a = 1, twin_b = 2) moving through the volume.

    fade: one twin's contrast drops to 0-25 % for `window` (2-4) slices (still labelled); gap: one twin
    is absent for `window` slices (unlabelled there); drift: contrast and background drift along the
    volume. A window of 7-10 slices (kind "+long") outlasts SAM 2's 6 recent memories: after it, `fifo`
    remembers only the faded or empty slices and the prompt, a self-sorting bank its confident ones.
    `notes` holds "extent" {value: (first, last)}, "faded" {value: [slices]}, "gap" {value: [slices]} and
    "untapered" {value: [slices]} (where a twin is not in one of its end caps, the two share one shape).
    """
    rng = np.random.default_rng(seed)
    I, J, K = shape
    x = np.linspace(-1.0, 1.0, I, dtype=np.float32)[:, None]
    y = np.linspace(-1.0, 1.0, J, dtype=np.float32)[None, :]
    t = np.linspace(-1.0, 1.0, K, dtype=np.float32)

    background = rng.uniform(-20, 30)
    contrast = rng.uniform(70, 150) * rng.choice([-1.0, 1.0], p=[0.25, 0.75])  # darker or brighter than tissue
    body = (x / 0.92) ** 2 + (y / 0.85) ** 2 <= 1.0

    # one cross-section for both twins on each slice: semi-axes and orientation vary along k
    r0 = rng.uniform(0.10, 0.26) if wide else rng.uniform(0.15, 0.21)
    ra = r0 * (1.0 + _smooth_curve(rng, t, 0.25))
    rb = r0 * rng.uniform(0.7, 1.0) * (1.0 + _smooth_curve(rng, t, 0.25))
    orient = rng.uniform(0, np.pi) + _smooth_curve(rng, t, 0.8)
    rmax = float(max(ra.max(), rb.max()))
    # the pair: centre, axis angle (turning by up to half a turn) and distance between the centres
    half = rmax + (rng.uniform(0.03, 0.25) if wide else rng.uniform(0.05, 0.12))  # the twins never touch
    sep = half * (1.0 + np.abs(_smooth_curve(rng, t, 0.25)))
    turn = rng.uniform(-1.0, 1.0) * (np.pi if wide else np.pi / 2)
    angle = rng.uniform(0, 2 * np.pi) + turn * (t + 1.0) / 2 + _smooth_curve(rng, t, 0.2)
    room = max(0.0, 0.72 - float(sep.max()) - rmax)  # how far the centre may wander inside the body
    cx = _smooth_curve(rng, t, room) if room > 0 else np.zeros_like(t)
    cy = _smooth_curve(rng, t, room) if room > 0 else np.zeros_like(t)

    extents = {v: _extent(rng, K, 0.4 if wide else 0.6) for v in TWIN_LABELS.values()}
    faded: dict[int, list[int]] = {}
    gaps: dict[int, list[int]] = {}
    if fade:
        v = int(rng.choice(list(TWIN_LABELS.values())))
        faded[v] = _window(rng, *extents[v], width=window)
    if gap:
        v = int(rng.choice(list(TWIN_LABELS.values())))
        gaps[v] = [k for k in _window(rng, *extents[v], width=window) if k not in faded.get(v, [])]
    fade_level = {v: rng.uniform(0.0, 0.25) for v in faded}
    if drift:
        gain = np.linspace(1.0, rng.uniform(0.35, 0.7), K) if rng.random() < 0.5 else np.linspace(rng.uniform(0.35, 0.7), 1.0, K)
        shift = np.linspace(0.0, rng.uniform(-40, 40), K)
    else:
        gain, shift = np.ones(K), np.zeros(K)

    image = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    untapered: dict[int, list[int]] = {v: [] for v in TWIN_LABELS.values()}
    for k in range(K):
        sl = np.where(body, background + shift[k], -1000.0).astype(np.float32)
        c, s = np.cos(orient[k]), np.sin(orient[k])
        for n, v in enumerate(TWIN_LABELS.values()):
            first, last = extents[v]
            if not first <= k <= last or k in gaps.get(v, []):
                continue
            # the ends taper like the caps of an ellipsoid
            span = max(1.0, (last - first) / 2.0)
            cap = np.sqrt(max(0.0, 1.0 - max(0.0, abs(k - (first + last) / 2.0) - 0.6 * span) ** 2 / (0.4 * span) ** 2))
            if cap == 1.0:
                untapered[v].append(k)
            side = 1.0 if n == 0 else -1.0
            px = cx[k] + side * sep[k] * np.cos(angle[k])
            py = cy[k] + side * sep[k] * np.sin(angle[k])
            u, w = (x - px) * c + (y - py) * s, -(x - px) * s + (y - py) * c
            inside = (u / max(ra[k] * cap, 1e-3)) ** 2 + (w / max(rb[k] * cap, 1e-3)) ** 2 <= 1.0
            inside &= body
            if not inside.any():
                continue
            level = fade_level[v] if k in faded.get(v, []) else 1.0
            sl[inside] = background + shift[k] + contrast * gain[k] * level
            label[:, :, k][inside] = v
        image[:, :, k] = sl
    sigma = noise_hu if noise_hu is not None else rng.uniform(8, 16)
    image += rng.normal(0.0, sigma, size=shape).astype(np.float32)
    present = {v: [int(k) for k in np.nonzero((label == v).any(axis=(0, 1)))[0]] for v in TWIN_LABELS.values()}
    notes = {
        "kind": "+".join(["twins"] + [name for name, on in (("fade", fade), ("gap", gap), ("drift", drift),
                                                             ("long", tuple(window) == LONG_WINDOW), ("wide", wide))
                                      if on]),
        "extent": {v: (p[0], p[-1]) if p else None for v, p in present.items()},
        "faded": {v: ks for v, ks in faded.items() if ks},
        "gap": {v: ks for v, ks in gaps.items() if ks},
        "untapered": untapered,  # slices where a twin has its full cross-section (not in its end caps)
    }
    return Phantom(image=image, label=label, spacing=tuple(float(s) for s in spacing), labels=dict(TWIN_LABELS),
                   notes=notes)


def make_faded_phantom(shape=(64, 64, 32), seed: int = 0, spacing=(1.0, 1.0, 2.5)) -> Phantom:
    """An organ/vessel/lesion phantom whose organ fades to 0-25 % contrast on 2-4 slices (still
    labelled) and whose contrast drifts along the volume."""
    rng = np.random.default_rng([seed, 1])
    p = make_phantom(shape, seed=seed, spacing=spacing)
    organ = p.label == PHANTOM_LABELS["organ"]
    present = np.nonzero(organ.any(axis=(0, 1)))[0]
    ks = _window(rng, int(present[0]), int(present[-1]), width=(2, 4)) if present.size else []
    body_level = float(np.median(p.image[(p.label == 0) & (p.image > -500)]))
    image = p.image.copy()
    level = rng.uniform(0.0, 0.25)
    for k in ks:  # pull the organ's voxels towards the surrounding tissue
        m = organ[:, :, k]
        image[:, :, k][m] = body_level + level * (image[:, :, k][m] - body_level)
    gain = np.linspace(1.0, rng.uniform(0.5, 0.8), shape[2], dtype=np.float32)
    body = image > -500
    image = np.where(body, body_level + (image - body_level) * gain[None, None, :], image)
    return Phantom(image=image.astype(np.float32), label=p.label, spacing=p.spacing, labels=dict(p.labels),
                   notes={"kind": "phantom+fade+drift", "faded": {PHANTOM_LABELS["organ"]: ks} if ks else {}})


def make_memory_phantom(kind: str, shape=(64, 64, 32), seed: int = 0, spacing=(1.0, 1.0, 2.5)) -> Phantom:
    """One case by name: twins, twins+fade, twins+gap, twins+drift, twins+fade+gap+drift ..., with
    "+long" a fade or gap of 7-10 slices, or phantom+fade (the organ/vessel/lesion phantom with a fading
    organ and drifting contrast)."""
    parts = kind.split("+")
    if parts[0] == "phantom":
        return make_faded_phantom(shape, seed, spacing)
    if parts[0] != "twins" or any(p not in KINDS for p in parts):
        raise ValueError(f"unknown memory phantom {kind!r}: twins[+fade][+gap][+drift][+long] or phantom+fade")
    return make_twins(shape, seed, spacing, fade="fade" in parts, gap="gap" in parts, drift="drift" in parts,
                      window=LONG_WINDOW if "long" in parts else (2, 4), wide="wide" in parts)
