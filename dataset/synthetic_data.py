"""A seeded generator of synthetic short-axis cardiac cine MRI slices: the embedded default data.

Why: the pipeline must run end to end (ingest, validate, train, evaluate, serve) without the
licensed Sunnybrook / NVIDIA DLI data, so it ships a stand-in with the same record schema and a
similar look, and with masks that are exact by construction.

Each patient is a stack of slices from the LV base (slice 0) towards and beyond the apex. Each
slice is painted back to front at the pixel centres of the ``records.IMAGE_SHAPE`` grid (sizes
in pixels):

* air outside the body (0), an elliptic torso outline with a bright subcutaneous fat band
  (~700-1000) over a darker chest-wall muscle layer (~150-260);
* medium mediastinal soft tissue (~180-320), dark lungs on both sides of the heart (~5-40, with a
  few faint vessels), a liver of medium intensity (~250-420) growing towards the apex, the spine
  and the bright descending aorta;
* the heart: a bright LV blood pool (~600-1100) inside a dark myocardial ring (~150-300, 6-12 px),
  a bright RV crescent wrapping the LV on the image left (septal side) with a thin free wall,
  patches of bright epicardial fat, and, in larger slices, papillary muscles as small dark blobs
  inside the blood pool.

The LV blood pool is a star-shaped contour (an ellipse-like radius with a few low-frequency
harmonics, randomly rotated) and the mask is that contour filled at the same pixel centres,
papillary muscles included, as in the Sunnybrook i-contours; so image and mask agree. After
painting come a small texture, a smooth multiplicative coil bias field, the per-patient gain, a
slight blur (partial volume), Rician noise ``sqrt((s + n1)**2 + n2**2)`` and, for ~30% of
patients, a circular field of view with zeros outside it. Images are int64 >= 0, maxima usually
~700-1600.

Randomness comes only from the ``numpy.random.Generator`` passed in; ``synthesize_dataset`` derives
one per patient from ``(seed, patient_id)`` so a seed always gives the same slices, whatever the
split or order (and byte-identical files as long as ``records.encode_example`` serialises
deterministically).
"""
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from dataset import patient_split
from dataset import records

GENERATOR_VERSION = "synthetic-sax-1"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
FILE_PREFIX = "synthetic"
MANIFEST_NAME = "manifest.json"

_SIZE = records.IMAGE_SIZE
_CENTRE = (_SIZE - 1) / 2.0
# Pixel-centre coordinates shared by every slice: rows (y, pointing down) and columns (x); float32
# halves the memory traffic of the painting, which is what the generation time is made of.
_YY, _XX = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
_AXIS = np.arange(_SIZE, dtype=np.float32)

SliceRecord = Tuple[str, np.ndarray, np.ndarray]


def patient_name(patient_id: int) -> str:
    """The ``patient_id`` feature of the records, e.g. ``synth-p007``."""
    return f"synth-p{patient_id:03d}"


def slice_name(patient_id: int, slice_index: int) -> str:
    """The record name; the patient prefix lets tests and tools check the split by patient."""
    return f"{patient_name(patient_id)}-s{slice_index:02d}"


# ----------------------------------------------------------------------------------------------
# geometry helpers


def _polar(cx: float, cy: float) -> Tuple[np.ndarray, np.ndarray]:
    """Radius and angle of every pixel centre around (cx, cy); angles follow image axes."""
    dx = _XX - np.float32(cx)
    dy = _YY - np.float32(cy)
    return np.hypot(dx, dy), np.arctan2(dy, dx)


def _harmonic_radius(theta: np.ndarray, radius: float, amps: Sequence[float],
                     phases: Sequence[float]) -> np.ndarray:
    """A smooth closed contour r(theta): a circle bent by harmonics 2, 3, ... (ellipse and more)."""
    factor = np.ones_like(theta)
    for order, (amp, phase) in enumerate(zip(amps, phases), start=2):
        factor += np.float32(amp) * np.cos(order * theta - np.float32(phase))
    return np.float32(radius) * factor


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside) of every pixel for a rotated ellipse."""
    c, s = np.cos(angle), np.sin(angle)
    # the rotated, scaled coordinates are separable sums of row and column terms
    dx = _AXIS - np.float32(cx)
    dy = _AXIS - np.float32(cy)
    u = (dy[:, None] * np.float32(s / a)) + (dx[None, :] * np.float32(c / a))
    v = (dy[:, None] * np.float32(c / b)) - (dx[None, :] * np.float32(s / b))
    return np.sqrt(u * u + v * v)


def _smooth_waves(rng: np.random.Generator, wavelength: float, num_waves: int = 8) -> np.ndarray:
    """A cheap smooth random field (std ~1): random plane waves, each an outer product of 1-D
    cosines and sines, so no large-kernel filtering is needed per slice."""
    field = np.zeros(records.IMAGE_SHAPE, dtype=np.float32)
    for _ in range(num_waves):
        k = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4))
        direction = rng.uniform(0, 2 * np.pi)
        kx, ky = k * np.cos(direction), k * np.sin(direction)
        phase_x, phase_y = rng.uniform(0, 2 * np.pi, size=2)
        # cos(kx x + ky y + phase) = cos(.x)cos(.y) - sin(.x)sin(.y)
        ax = (kx * _AXIS + phase_x).astype(np.float32)
        ay = (ky * _AXIS + phase_y).astype(np.float32)
        field += np.outer(np.cos(ay), np.cos(ax)) - np.outer(np.sin(ay), np.sin(ax))
    return field * np.float32(np.sqrt(2.0 / num_waves))


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field that tiles (fine texture, lung vessels)."""
    field = ndimage.gaussian_filter(
        rng.standard_normal(records.IMAGE_SHAPE, dtype=np.float32), sigma, mode="wrap")
    return field / (field.std() + np.float32(1e-12))


def _roll(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same tiling field at a random offset: per-slice variety without re-filtering."""
    return np.roll(field, tuple(rng.integers(0, _SIZE, size=2)), axis=(0, 1))


def _bias_field(rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative coil-sensitivity field: quadratic polynomial plus a coil blob."""
    x = (_XX - _CENTRE) / _CENTRE
    y = (_YY - _CENTRE) / _CENTRE
    c = rng.uniform(-0.15, 0.15, size=5)
    field = 1.0 + c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y
    # A surface coil near the chest brightens one side more than a polynomial would.
    bx, by = rng.uniform(-1.0, 1.0, size=2)
    width = rng.uniform(0.5, 0.9)
    field += rng.uniform(0.0, 0.35) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * width ** 2))
    centre = int(_CENTRE)
    return np.clip(field / field[centre, centre], 0.45, 1.8).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# per-patient parameters


def _patient_params(rng: np.random.Generator, num_slices: int) -> Dict:
    """Draws everything that is constant within a patient (anatomy, contrast, scanner)."""
    p: Dict = {}
    # contrast (SSFP: blood and fat bright, muscle dark), gain and noise
    p["blood"] = rng.uniform(620, 1050)
    p["myo"] = rng.uniform(150, 290)
    p["fat"] = rng.uniform(700, 1000)
    p["soft"] = rng.uniform(180, 320)
    p["liver"] = rng.uniform(250, 420)
    p["lung"] = rng.uniform(5, 35)
    p["gain"] = rng.uniform(0.75, 1.35)
    p["noise"] = rng.uniform(8, 28)
    p["blur"] = rng.uniform(0.5, 0.95)
    p["circular_fov"] = rng.random() < 0.3
    p["fov_radius"] = rng.uniform(0.96, 1.04) * _SIZE / 2
    # torso: large enough to be cropped by the field of view at times, heart near the front
    p["body_c"] = (_CENTRE + rng.uniform(-10, 10), _CENTRE + rng.uniform(0, 20))
    p["body_ab"] = (rng.uniform(125, 170), rng.uniform(95, 125))
    p["body_angle"] = rng.uniform(-0.15, 0.15)
    p["body_harm"] = (rng.uniform(0, 0.04), rng.uniform(0, 0.03))
    p["body_phase"] = tuple(rng.uniform(0, 2 * np.pi, size=2))
    p["fat_thick"] = rng.uniform(5, 16)
    p["fat_angle"] = rng.uniform(0, 2 * np.pi)
    p["muscle_thick"] = rng.uniform(5, 11)
    # LV: centre, radius from base to apex, shape harmonics, wall
    p["lv_c"] = (_CENTRE + rng.uniform(-30, 30), _CENTRE + rng.uniform(-30, 30))
    p["lv_drift"] = rng.uniform(-0.9, 0.9, size=2)  # apical displacement per slice
    p["r_base"] = rng.uniform(18, 30)
    p["r_apex"] = rng.uniform(4, 8)
    p["taper"] = rng.uniform(1.5, 2.8)
    p["lv_amps"] = (rng.uniform(0.03, 0.12), rng.uniform(0.0, 0.05), rng.uniform(0.0, 0.03))
    p["lv_phases"] = tuple(rng.uniform(0, 2 * np.pi, size=3))
    p["wall"] = rng.uniform(6.0, 9.0)
    p["septum_angle"] = np.pi + rng.uniform(-0.1, 0.4)  # RV side: image left, slightly up
    # RV crescent
    p["rv_shift"] = rng.uniform(0.4, 0.65)  # of the epicardial radius, towards the septum
    # depth beyond the epicardium; bounded so the RV never reaches round the lateral wall
    p["rv_depth"] = rng.uniform(0.5, min(1.0, 2 * p["rv_shift"] - 0.2))
    p["rv_wrap"] = rng.uniform(np.radians(70), np.radians(105))  # insertion points' angle
    p["rv_wall"] = rng.uniform(2.0, 3.5)
    p["rv_fat"] = rng.uniform(1.0, 4.0)
    p["rv_blood"] = rng.uniform(0.85, 1.0)
    p["papillary"] = rng.random() < 0.75
    p["pap_angles"] = (rng.uniform(-1.2, -0.5), rng.uniform(0.6, 1.4))
    p["epi_fat_angle"] = rng.uniform(0, 2 * np.pi)
    p["epi_fat_phase"] = rng.uniform(0, 2 * np.pi)
    # slices beyond the apex (empty masks): usually one, sometimes none or two; never more than
    # a fifth of the stack, so short test stacks keep their cavities
    n_empty = int(rng.choice([0, 1, 2], p=[0.25, 0.6, 0.15]))
    p["n_empty"] = min(n_empty, num_slices // 5)
    p["apex_tip"] = rng.uniform(3, 8) if rng.random() < 0.7 else 0.0
    # surroundings relative to the heart
    # lungs fill the chest cavity beside the heart up to the chest wall
    p["lung_l"] = (rng.uniform(42, 62), rng.uniform(70, 100), rng.uniform(-0.35, 0.15),
                   rng.uniform(-20, 5))
    p["lung_r"] = (rng.uniform(38, 58), rng.uniform(65, 95), rng.uniform(-0.15, 0.35),
                   rng.uniform(-25, 0))
    p["liver_shift"] = rng.uniform(-15, 15, size=2)
    p["spine_dx"] = rng.uniform(-10, 15)
    p["aorta_r"] = rng.uniform(8, 12)
    return p


def _patient_fixed(p: Dict, rng: np.random.Generator) -> Dict:
    """What does not move between one patient's slices: torso, spine, aorta, coil, textures."""
    bcx, bcy = p["body_c"]
    _, th_b = _polar(bcx, bcy)
    q = _ellipse(bcx, bcy, *p["body_ab"], p["body_angle"])
    q = q / (1 + p["body_harm"][0] * np.cos(3 * th_b - p["body_phase"][0])
             + p["body_harm"][1] * np.cos(4 * th_b - p["body_phase"][1]))
    mean_ab = 0.5 * sum(p["body_ab"])
    fat_thick = p["fat_thick"] * (1 + 0.45 * np.cos(th_b - p["fat_angle"]))
    body = q < 1.0
    inner_muscle = q < 1.0 - fat_thick / mean_ab
    inner_soft = q < 1.0 - (fat_thick + p["muscle_thick"]) / mean_ab
    torso = np.zeros(records.IMAGE_SHAPE, dtype=np.float32)
    # subcutaneous fat at the outline, chest-wall muscle inside it, soft tissue inside that
    torso[body] = p["fat"]
    torso[inner_muscle] = p["myo"] * 0.9
    torso[inner_soft] = p["soft"]
    # spine (marrow-bright vertebral body in a dark cortex) and the descending aorta in front
    sx, sy = bcx + p["spine_dx"], bcy + p["body_ab"][1] * 0.74
    vertebra = _ellipse(sx, sy, 17, 14)
    aorta = _ellipse(sx - 24, sy - 26, p["aorta_r"], p["aorta_r"]) < 1.0
    posterior = [((vertebra < 1.2) & body, p["myo"] * 0.5),
                 ((vertebra < 1.0) & body, p["fat"] * 0.45),
                 (aorta & inner_soft, p["blood"] * 0.9)]
    return {
        "torso": torso,
        "inner_soft": inner_soft,
        "posterior": posterior,
        "bias": _bias_field(rng),
        "texture": _smooth_noise(rng, 2.0),
        "vessels": _smooth_noise(rng, 1.3) > 2.0,
    }


# ----------------------------------------------------------------------------------------------
# one slice


def _render_slice(p: Dict, fixed: Dict, index: int, num_slices: int,
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Paints one slice back to front; returns (float image before noise, uint8 mask)."""
    n_cavity = num_slices - p["n_empty"]
    beyond_apex = index >= n_cavity
    t = min(index / max(n_cavity - 1, 1), 1.0)  # 0 at the base, 1 at the last cavity slice

    jitter = rng.normal(0, 0.8, size=2)
    cx = p["lv_c"][0] + p["lv_drift"][0] * index + jitter[0]
    cy = p["lv_c"][1] + p["lv_drift"][1] * index + jitter[1]
    # LV radius tapers from base to apex; the wall thickens a little towards the apex
    radius = p["r_apex"] + (p["r_base"] - p["r_apex"]) * (1 - t ** p["taper"])
    mean_wall = p["wall"] * (1 + 0.3 * t)
    mean_epi = (p["apex_tip"] or p["r_apex"]) if beyond_apex else radius + mean_wall
    rv_scale = 0.0 if beyond_apex else max(1.0 - 0.75 * t ** 1.3, 0.0)
    rv_reach = mean_epi * (1.0 + p["rv_depth"] * rv_scale)  # RV extent on the septal side
    wobble = _smooth_waves(rng, 60)  # irregular organ outlines, large-scale shading
    inner_soft = fixed["inner_soft"]
    image = fixed["torso"].copy()

    # lungs: the left one hugs the LV lateral wall, the right one lies beyond the RV
    lung_size = 1.0 - 0.2 * t
    a, b, ang, dy = p["lung_l"]
    lungs = _ellipse(cx + mean_epi + 0.75 * a, cy + dy, a * lung_size, b * lung_size,
                     ang) + 0.07 * wobble < 1.0
    a, b, ang, dy = p["lung_r"]
    lungs |= _ellipse(cx - max(rv_reach, mean_epi) - 0.8 * a, cy + dy, a * lung_size,
                      b * lung_size, ang) - 0.07 * wobble < 1.0
    lungs &= inner_soft
    image[lungs] = p["lung"]
    image[lungs & _roll(fixed["vessels"], rng)] = p["lung"] + 0.4 * p["soft"]  # faint vessels

    # liver below the heart on the image left, growing towards the apex (diaphragm level)
    liver_r = (35 + 35 * t)
    liver = _ellipse(cx - 50 + p["liver_shift"][0], cy + (95 - 25 * t)
                     + p["liver_shift"][1], liver_r * 1.6, liver_r, 0.35) + 0.08 * wobble < 1.0
    image[liver & inner_soft] = p["liver"]
    for region, value in fixed["posterior"]:
        image[region] = value

    # texture on all tissue (blood pools are painted afterwards and stay smooth)
    image *= 1.0 + 0.05 * _roll(fixed["texture"], rng) + 0.05 * wobble

    rho, theta = _polar(cx, cy)
    mask = np.zeros(records.IMAGE_SHAPE, dtype=records.LABEL_DTYPE)
    if beyond_apex:
        # past the apex: at most a small solid myocardial tip, no cavity
        if index == n_cavity and p["apex_tip"] > 0:
            tip = rho <= _harmonic_radius(theta, p["apex_tip"], p["lv_amps"], p["lv_phases"])
            image[tip] = p["myo"]
        return image, mask

    amps = tuple(a + rng.normal(0, 0.008) for a in p["lv_amps"])
    r_endo = _harmonic_radius(theta, radius, amps, p["lv_phases"])
    wall = np.clip(np.float32(mean_wall) * (1 + np.float32(0.12) * np.cos(
        theta - np.float32(p["septum_angle"]))), 6.0, 12.0)
    r_epi = r_endo + wall
    epi = rho <= r_epi
    blood = rho <= r_endo

    # epicardial fat: a bright rim of 0-4 px over parts of the circumference
    fat_w = np.clip(1.0 + 2.5 * np.cos(theta - np.float32(p["epi_fat_angle"]))
                    + 1.2 * np.cos(3 * theta - np.float32(p["epi_fat_phase"])), 0.0, 4.0)
    epi_fat = (rho <= r_epi + fat_w) & ~epi
    image[epi_fat & inner_soft] = p["fat"] * 0.85

    # RV: a crescent wrapping the septal side, i.e. an ellipse shifted from the LV centre towards
    # the septum, minus the LV. Its depth beyond the epicardium shrinks towards the apex and its
    # width is set so that it meets the epicardium at +-rv_wrap from the septal axis.
    depth = p["rv_depth"] * rv_scale
    if depth > 0.08:
        shift = p["rv_shift"]
        rv_a = 1.0 - shift + depth  # in units of the epicardial radius
        along = (shift - np.cos(p["rv_wrap"])) / rv_a
        rv_b = np.sin(p["rv_wrap"]) / np.sqrt(max(1.0 - along ** 2, 0.05))
        rv_cx = cx + np.cos(p["septum_angle"]) * shift * mean_epi
        rv_cy = cy + np.sin(p["septum_angle"]) * shift * mean_epi
        outside_lv = ~epi & inner_soft
        for grow, value, where in ((p["rv_wall"] + p["rv_fat"], p["fat"] * 0.8, wobble > 0.4),
                                   (p["rv_wall"], p["myo"], True),
                                   (0.0, p["blood"] * p["rv_blood"], True)):
            region = _ellipse(rv_cx, rv_cy, rv_a * mean_epi + grow, rv_b * mean_epi + grow,
                              p["septum_angle"]) < 1.0
            image[region & where & outside_lv] = value

    # LV myocardium, then the blood pool exactly where the mask is
    image[epi] = p["myo"]
    image[blood] = p["blood"]
    mask[blood] = 1

    # papillary muscles: small dark blobs against the lateral wall, inside the mask
    if p["papillary"] and radius >= 10:
        for angle in p["pap_angles"]:
            pr = (2.0 + 0.08 * radius) * rng.uniform(0.8, 1.2)
            dist = radius - pr - 0.5
            pap = _ellipse(cx + dist * np.cos(angle), cy + dist * np.sin(angle), pr, pr) <= 1.0
            image[pap & blood] = p["myo"] * 1.1
    return image, mask


def _acquire(image: np.ndarray, p: Dict, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turns a painted slice into a scanner-like magnitude image (bias, blur, Rician noise, FOV)."""
    signal = ndimage.gaussian_filter(image * bias * np.float32(p["gain"]), p["blur"])
    sigma = np.float32(p["noise"])
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    noisy = np.hypot(real, imaginary)
    if p["circular_fov"]:
        noisy[np.hypot(_XX - _CENTRE, _YY - _CENTRE) > p["fov_radius"]] = 0.0
    return np.rint(noisy).astype(records.IMAGE_DTYPE)  # a magnitude: never negative


# ----------------------------------------------------------------------------------------------
# public API


def generate_patient(patient_id: int, num_slices: int,
                     rng: np.random.Generator) -> List[SliceRecord]:
    """One patient's stack from the base (slice 0) to beyond the apex: (name, image, mask)."""
    params = _patient_params(rng, num_slices)
    fixed = _patient_fixed(params, rng)
    stack = []
    for index in range(num_slices):
        image, mask = _render_slice(params, fixed, index, num_slices, rng)
        stack.append((slice_name(patient_id, index),
                      _acquire(image, params, fixed["bias"], rng), mask))
    return stack


def split_patients(num_patients: int, eval_fraction: float,
                   seed: int) -> Tuple[List[int], List[int]]:
    """Splits patient ids 0..num_patients-1 into (train, eval), by patient so no anatomy leaks
    (see :func:`dataset.patient_split.split_patients`)."""
    return patient_split.split_patients(list(range(num_patients)), eval_fraction, seed)


def patient_rng(seed: int, patient_id: int) -> np.random.Generator:
    """The RNG of one patient: depends on (seed, patient_id) only, not on the split or order."""
    return np.random.default_rng([seed, patient_id])


def generate_slices(num_patients: int, slices_per_patient: int = 13,
                    seed: int = 42) -> List[records.Slice]:
    """All slices of patients 0..num_patients-1 in memory, as ``records.Slice`` (the Trainer mixes
    these into real training data; ``synthesize_dataset`` writes the same slices to files)."""
    return [records.Slice(name, image, mask, patient_id=patient_name(patient_id))
            for patient_id in range(num_patients)
            for name, image, mask in generate_patient(patient_id, slices_per_patient,
                                                      patient_rng(seed, patient_id))]


def synthesize_dataset(out_dir: str, num_patients: int = 20, slices_per_patient: int = 13,
                       eval_fraction: float = 0.1, seed: int = 42,
                       progress: bool = True) -> dict:
    """Writes out_dir/{train,eval}/ TFRecords and out_dir/manifest.json; returns the manifest.

    Defaults match the original lab: 20 patients x 13 slices, 2 eval patients = 234/26 slices.
    """
    from tqdm import tqdm

    if num_patients < 1 or slices_per_patient < 1:
        raise ValueError("num_patients and slices_per_patient must be >= 1")
    train_ids, eval_ids = split_patients(num_patients, eval_fraction, seed)
    bar = tqdm(total=num_patients * slices_per_patient, desc="synthesizing slices", unit="slice",
               file=sys.stderr, disable=not progress)
    splits = {}
    try:
        for split, ids in ((TRAIN_SPLIT, train_ids), (EVAL_SPLIT, eval_ids)):
            split_dir = os.path.join(out_dir, split)
            os.makedirs(split_dir, exist_ok=True)
            file_name = records.record_file_name(f"{FILE_PREFIX}-{split}")
            empty = [0]

            def slices(ids=ids, empty=empty):
                for patient_id in ids:
                    for name, image, mask in generate_patient(
                            patient_id, slices_per_patient, patient_rng(seed, patient_id)):
                        empty[0] += int(not mask.any())
                        bar.update(1)
                        yield records.Slice(name, image, mask,
                                            patient_id=patient_name(patient_id))

            count = records.write_lab_records(os.path.join(split_dir, file_name), slices())
            splits[split] = {
                "file": os.path.join(split, file_name),
                "patients": ids,
                "num_patients": len(ids),
                "num_slices": count,
                "num_empty_slices": empty[0],
            }
    finally:
        bar.close()
    manifest = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "num_patients": num_patients,
        "slices_per_patient": slices_per_patient,
        "eval_fraction": eval_fraction,
        "image_shape": list(records.IMAGE_SHAPE),
        "splits": splits,
        "num_slices": sum(v["num_slices"] for v in splits.values()),
        "num_empty_slices": sum(v["num_empty_slices"] for v in splits.values()),
    }
    with open(os.path.join(out_dir, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest
