"""Visual features per sampled frame: a torchvision backbone, or cheap frame statistics offline.

``VisualConfig.backbone``:

* a torchvision classifier without its last layer -- ``resnet18`` (512 columns), ``resnet34``
  (512), ``resnet50`` (2048), ``mobilenet_v2`` (1280), ``mobilenet_v3_small`` (576),
  ``mobilenet_v3_large`` (960): globally pooled features of the centre 224 x 224 crop of each
  frame (short side scaled to 224), ImageNet normalisation. Weights come from ``weights``: a local
  state-dict file (``torch.load(weights_only=True)``), ``"cache"`` for torchvision's own file in
  the torch hub cache (``~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth``, ...), or
  ``"random"`` (seeded; the compute cost of the backbone only, the features carry no meaning);
* ``stats``: 34 frame statistics on frames scaled to a 64-pixel short side, needing no weights
  (``STATS_NAMES``, in order): 8 hue-histogram bins weighted by saturation ``hue_hist_0..7``,
  4 saturation and 4 value (HSV) histogram bins ``sat_hist_0..3``, ``val_hist_0..3`` (fractions
  of pixels), ``mean_r/g/b``, ``std_r/g/b`` (RGB in [0, 1]), ``brightness`` and ``contrast``
  (mean and std of luma), ``saturation`` (mean), ``colourfulness`` (Hasler and Suesstrunk),
  ``sharpness`` (mean absolute luma gradient), ``motion_energy`` (mean absolute luma change from
  the previous sampled frame), ``hist_change`` (total-variation distance between the 8-bin R, G and B
  histograms, linearly interpolated between bins, of this and the previous sampled frame, averaged
  over the three channels), ``shot_change`` (1 when ``hist_change``
  exceeds 0.5), and the mean luma of the four quadrants ``luma_tl, luma_tr, luma_bl, luma_br``.
  The first frame has motion and change 0;
* ``face``: 17 face-geometry columns (``FACE_NAMES``) on frames scaled to a 96-pixel short side,
  needing no weights. **A geometric proxy for rendered faces** (SynthVideo's drawn presenter,
  docs/synthvideo.md), not a face detector for camera footage: the face is the largest
  connected region of skin-coloured pixels (R > G > B, G >= B - 0.02, R - B > 0.08, max(R, G, B)
  > 0.22 on RGB in [0, 1]) with its holes filled; inside it, *dark* pixels (weight
  clip(1 - luma / (0.75 x the median skin luma), 0, 1)) form the features, found in bands of
  the region's height measured from its top (brows 0.12-0.35, eyes 0.35-0.48, mouth 0.6-0.9) and
  within 0.3 face widths of its centre. Columns: ``face_found`` (1 when the region covers at least
  0.5% of the frame; otherwise every other column is 0), ``face_x``, ``face_y`` (centre of the
  region's bounding box over the frame's width / height), ``face_size`` (box height over frame
  height), ``face_aspect`` (width over height), ``mouth_curvature`` (minus the quadratic
  coefficient of a weighted least-squares parabola y = c + b u + a u^2 through the mouth pixels,
  u = horizontal offset over half the face width, y in face heights: positive for a smile, negative
  for a frown), ``mouth_corner_lift`` (mean height of the mouth's centre (|u| < 0.12) below its
  corners (0.24 < |u| < 0.4), face heights), ``mouth_openness`` (mouth weight per mouth column,
  face heights), ``mouth_width`` (columns with mouth weight above 0.5 pixels, face widths),
  ``brow_tilt`` (half the difference of the right and left brows' fitted slopes dy/dx: positive
  when the inner ends are higher), ``brow_raise`` (eye-band minus brow-band mean height, face
  heights), ``eye_openness`` (eye-band weight per face area), ``face_warmth`` (mean R - B over the
  skin pixels), ``scene_warmth`` (mean R - B outside the face), ``face_luma`` (mean skin luma),
  ``face_motion`` (shift of the box centre from the previous sampled frame, face heights; 0 on the
  first) and ``frame_motion`` (mean absolute luma change from the previous frame);
* ``auto``: ``resnet18`` when its torchvision weights are in the cache, else ``stats``.

``resolve`` turns ``auto`` / ``cache`` into the concrete choice once, in the main process; the
choice and its width go into the output pickle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

BACKBONES = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048,
    "mobilenet_v2": 1280, "mobilenet_v3_small": 576, "mobilenet_v3_large": 960,
}
STATS_NAMES = (
    *(f"hue_hist_{i}" for i in range(8)), *(f"sat_hist_{i}" for i in range(4)), *(f"val_hist_{i}" for i in range(4)),
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "brightness", "contrast", "saturation",
    "colourfulness", "sharpness", "motion_energy", "hist_change", "shot_change",
    "luma_tl", "luma_tr", "luma_bl", "luma_br",
)
FACE_NAMES = (
    "face_found", "face_x", "face_y", "face_size", "face_aspect", "mouth_curvature", "mouth_corner_lift",
    "mouth_openness", "mouth_width", "brow_tilt", "brow_raise", "eye_openness", "face_warmth", "scene_warmth",
    "face_luma", "face_motion", "frame_motion",
)
FEATURE_SETS = {"stats": len(STATS_NAMES), "face": len(FACE_NAMES)}  # computed features: no weights
STATS_FRAME_SIZE = 64
FACE_FRAME_SIZE = 96
FACE_MIN_AREA = 0.005
BROW_BAND, EYE_BAND, MOUTH_BAND = (0.12, 0.35), (0.35, 0.48), (0.6, 0.9)
BACKBONE_FRAME_SIZE = 224
SHOT_CHANGE_THRESHOLD = 0.5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisualConfig:
    """``backbone``: stats | face | auto | a key of BACKBONES; ``weights``: a file, "cache" or "random"
    (ignored by stats and face)."""

    backbone: str = "auto"
    weights: str = "cache"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.backbone not in ("auto", *FEATURE_SETS, *BACKBONES):
            raise ValueError(f"visual backbone {self.backbone!r}: expected auto, stats, face or one of {sorted(BACKBONES)}")

    @property
    def needs_weights(self) -> bool:
        """A torchvision backbone (stats and face are computed, auto is not resolved yet)."""
        return self.backbone in BACKBONES

    @property
    def frame_size(self) -> int:
        return {"stats": STATS_FRAME_SIZE, "face": FACE_FRAME_SIZE}.get(self.backbone, BACKBONE_FRAME_SIZE)

    @property
    def dim(self) -> int:
        return FEATURE_SETS.get(self.backbone) or BACKBONES[self.backbone]


def cached_weights(backbone: str) -> Path:
    """Where torchvision keeps the default ImageNet weights of ``backbone`` (may not exist)."""
    import torchvision

    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def resolve(cfg: VisualConfig) -> VisualConfig:
    """The concrete choice: ``auto`` becomes resnet18 or stats, ``cache`` becomes a file path."""
    if cfg.backbone == "auto":
        found = cached_weights("resnet18").is_file()
        cfg = dataclasses.replace(cfg, backbone="resnet18" if found else "stats", weights="cache")
    if not cfg.needs_weights or cfg.weights == "random":
        return cfg
    path = cached_weights(cfg.backbone) if cfg.weights == "cache" else Path(cfg.weights)
    if not path.is_file():
        where = "not in the torchvision cache" if cfg.weights == "cache" else "not found"
        raise FileNotFoundError(f"{cfg.backbone} weights {path}: {where}; pass a state-dict file, "
                                "'random' (compute cost only) or use the 'stats' features")
    return dataclasses.replace(cfg, weights=str(path))


def feature_names(cfg: VisualConfig) -> list[str]:
    if cfg.backbone == "stats":
        return list(STATS_NAMES)
    if cfg.backbone == "face":
        return list(FACE_NAMES)
    return [f"{cfg.backbone}_{i}" for i in range(cfg.dim)]


# --------------------------------------------------------------------------------------------
# Frame statistics
# --------------------------------------------------------------------------------------------


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1), saturation and value in [0, 1] of (..., 3) RGB in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = np.where(chroma > 0, hue, 0.0)
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    return hue, saturation, high


def _binned(index: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """(T, P) bin indices and weights -> (T, bins) sums per frame (one ``bincount``)."""
    offset = index + bins * np.arange(index.shape[0])[:, None]
    return np.bincount(offset.ravel(), weights.ravel(), minlength=index.shape[0] * bins).reshape(-1, bins)


def _hist(values: np.ndarray, bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(T, P) values in [0, 1] -> (T, bins) fractions of the P pixels (weighted when given)."""
    index = np.minimum((values * bins).astype(np.int64), bins - 1)
    return _binned(index, np.ones_like(values) if weights is None else weights, bins) / values.shape[1]


def _soft_hist(values: np.ndarray, bins: int) -> np.ndarray:
    """(T, P) values in [0, 1] -> (T, bins) histogram with linear interpolation between bin centres,
    so that a gradual drift of colour moves mass gradually instead of jumping across a bin edge."""
    pos = values * (bins - 1)
    low = np.minimum(pos.astype(np.int64), bins - 2)
    frac = pos - low
    return (_binned(low, 1 - frac, bins) + _binned(low + 1, frac, bins)) / values.shape[1]


def frame_statistics(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 34) float32 in the order of ``STATS_NAMES``."""
    t, h, w, _ = frames.shape
    rgb = frames.astype(np.float32) / np.float32(255.0)
    flat = rgb.reshape(t, -1, 3)
    hue, sat, val = _hsv(flat)
    luma = flat @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    rg = flat[..., 0] - flat[..., 1]
    yb = 0.5 * (flat[..., 0] + flat[..., 1]) - flat[..., 2]
    colourfulness = np.hypot(rg.std(axis=1), yb.std(axis=1)) + 0.3 * np.hypot(rg.mean(axis=1), yb.mean(axis=1))
    image = luma.reshape(t, h, w)
    sharpness = 0.5 * (np.abs(np.diff(image, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(image, axis=2)).mean(axis=(1, 2)))
    motion = np.concatenate([[0.0], np.abs(np.diff(image, axis=0)).mean(axis=(1, 2))])
    colour = np.concatenate([_soft_hist(flat[..., c], 8) for c in range(3)], axis=1)  # (T, 24): R, G, B
    change = np.concatenate([[0.0], np.abs(np.diff(colour, axis=0)).sum(axis=1) / 6])  # mean TV distance
    quadrants = [image[:, rows, cols].mean(axis=(1, 2))
                 for rows in (slice(0, h // 2), slice(h // 2, h)) for cols in (slice(0, w // 2), slice(w // 2, w))]
    columns = [
        _hist(hue, 8, sat), _hist(sat, 4), _hist(val, 4), flat.mean(axis=1), flat.std(axis=1),
        np.stack([luma.mean(axis=1), luma.std(axis=1), sat.mean(axis=1), colourfulness, sharpness, motion,
                  change, (change > SHOT_CHANGE_THRESHOLD).astype(np.float64), *quadrants], axis=1),
    ]
    return np.concatenate(columns, axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Face geometry (rendered faces)
# --------------------------------------------------------------------------------------------


def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool skin-coloured pixels of (H, W, 3) RGB in [0, 1] (the rule in the docstring)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > g) & (g >= b - 0.02) & (r - b > 0.08) & (r > 0.22)


def _band_weights(dark: np.ndarray, yr: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    return dark * ((yr >= band[0]) & (yr < band[1]))


def _weighted_polyfit(x: np.ndarray, y: np.ndarray, w: np.ndarray, degree: int) -> np.ndarray | None:
    """Least-squares coefficients (highest power first), or None with too little weight or spread."""
    if w.sum() < 2.0 or np.ptp(x) < 1e-6:
        return None
    sw = np.sqrt(w)
    design = np.vander(x, degree + 1) * sw[:, None]
    coef, *_ = np.linalg.lstsq(design, y * sw, rcond=None)
    return coef


def _face_row(rgb: np.ndarray, luma: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The 17 columns but the two motion ones (filled by the caller) and the box centre (px)."""
    h, w = luma.shape
    row = np.zeros(len(FACE_NAMES))
    skin = skin_mask(rgb)
    labels, count = ndimage.label(skin)
    if count == 0:
        return row, None
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    if sizes[biggest - 1] < FACE_MIN_AREA * h * w:
        return row, None
    region = ndimage.binary_fill_holes(labels == biggest)
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    fh, fw = float(bottom - top), float(right - left)
    cx, cy = 0.5 * (left + right - 1), 0.5 * (top + bottom - 1)
    face_skin = region & skin
    skin_luma = float(np.median(luma[face_skin]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yr = (yy - top) / fh
    u = (xx - cx) / (0.5 * fw)
    dark = np.clip(1.0 - luma / (0.75 * max(skin_luma, 1e-3)), 0.0, 1.0) * region * (np.abs(u) < 0.6)
    mouth = _band_weights(dark, yr, MOUTH_BAND)
    brows = _band_weights(dark, yr, BROW_BAND)
    eyes = _band_weights(dark, yr, EYE_BAND)
    y_face = (yy - top) / fh
    sel = mouth > 0.05
    curvature = corner_lift = openness = width = 0.0
    coef = _weighted_polyfit(u[sel], y_face[sel], mouth[sel], 2)
    if coef is not None:
        curvature = -float(coef[0])
        centre_w, corner_w = mouth * (np.abs(u) < 0.12), mouth * ((np.abs(u) > 0.24) & (np.abs(u) < 0.4))
        if centre_w.sum() > 0.5 and corner_w.sum() > 0.5:
            corner_lift = float((centre_w * y_face).sum() / centre_w.sum() - (corner_w * y_face).sum() / corner_w.sum())
        column = mouth.sum(axis=0)
        mouth_cols = column > 0.5
        width = float(mouth_cols.sum()) / fw
        openness = float(column[mouth_cols].mean()) / fh if mouth_cols.any() else 0.0
    tilt = 0.0
    slopes = []
    for side in (u < 0, u > 0):
        ws = brows * side
        fit = _weighted_polyfit(xx[ws > 0.05], yy[ws > 0.05], ws[ws > 0.05], 1)
        slopes.append(float(fit[0]) if fit is not None else 0.0)
    tilt = 0.5 * (slopes[1] - slopes[0])
    raise_ = 0.0
    if brows.sum() > 0.5 and eyes.sum() > 0.5:
        raise_ = float((eyes * y_face).sum() / eyes.sum() - (brows * y_face).sum() / brows.sum())
    warm = rgb[..., 0] - rgb[..., 2]
    outside = ~region
    row[:] = [1.0, (cx + 0.5) / w, (cy + 0.5) / h, fh / h, fw / fh, curvature, corner_lift, openness, width, tilt,
              raise_, float(eyes.sum()) / (fh * fw), float(warm[face_skin].mean()),
              float(warm[outside].mean()) if outside.any() else 0.0, float(luma[face_skin].mean()), 0.0, 0.0]
    return row, (cx, cy)


def face_features(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 17) float32 in the order of ``FACE_NAMES``."""
    rgb_all = frames.astype(np.float64) / 255.0
    luma_all = rgb_all @ np.array([0.299, 0.587, 0.114])
    out = np.zeros((len(frames), len(FACE_NAMES)))
    previous: tuple[float, float] | None = None
    for i in range(len(frames)):
        row, centre = _face_row(rgb_all[i], luma_all[i])
        if centre is not None and previous is not None:
            row[FACE_NAMES.index("face_motion")] = np.hypot(centre[0] - previous[0], centre[1] - previous[1]) / (
                row[FACE_NAMES.index("face_size")] * frames.shape[1])
        if i:
            row[FACE_NAMES.index("frame_motion")] = float(np.abs(luma_all[i] - luma_all[i - 1]).mean())
        out[i] = row
        previous = centre
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}  # one per worker process and (backbone, weights)


def load_backbone(backbone: str, weights: str) -> torch.nn.Module:
    """The torchvision model with its classifier replaced by the identity, in eval mode."""
    key = (backbone, weights)
    if key not in _MODELS:
        import torchvision

        torch.manual_seed(0)  # "random" weights are the same in every worker and every run
        model = torchvision.models.get_model(backbone, weights=None)
        if weights != "random":
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 -- torch.load fails with pickle, zip and runtime errors alike
                detail = " ".join(str(exc).split())[:200]
                raise ValueError(f"{weights}: not a readable torch state-dict file ({type(exc).__name__}: {detail})") from None
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
                detail = " ".join(str(exc).split())[:200]
                raise ValueError(f"{weights}: not a state dict of torchvision {backbone} ({detail})") from None
        if backbone.startswith("resnet"):
            model.fc = torch.nn.Identity()
        else:
            model.classifier = torch.nn.Identity()
        _MODELS[key] = model.eval()
    return _MODELS[key]


def backbone_features(frames: np.ndarray, cfg: VisualConfig) -> np.ndarray:
    """(T, H, W, 3) uint8 with short side 224 -> (T, dim) float32 pooled backbone features."""
    model = load_backbone(cfg.backbone, cfg.weights)
    t, h, w, _ = frames.shape
    size = BACKBONE_FRAME_SIZE
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, t, cfg.batch_size):
            crop = torch.from_numpy(frames[start : start + cfg.batch_size, top : top + size, left : left + size])
            x = (crop.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            out.append(model(x).flatten(1))
    return torch.cat(out).numpy().astype(np.float32)


def visual_features(frames: np.ndarray, cfg: VisualConfig) -> np.ndarray:
    """(T, H, W, 3) uint8 frames -> (T, cfg.dim) float32 with the (resolved) ``cfg``."""
    if cfg.backbone == "stats":
        return frame_statistics(frames)
    if cfg.backbone == "face":
        return face_features(frames)
    return backbone_features(frames, cfg)
