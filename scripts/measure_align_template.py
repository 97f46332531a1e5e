#!/usr/bin/env python3
"""Measure which face alignment suits the dlib descriptor (``models/dlib_resnet_v1.onnx``).

The Rust aligner (``src/align.rs``) maps the five MTCNN landmarks (left eye, right eye, nose,
left and right mouth corners) onto a five-point template in 150x150 chip pixels with a
least-squares similarity transform (Umeyama: rotation, uniform scale, translation, no
reflection) and warps with ``cv2.warpAffine`` (INTER_LINEAR, BORDER_CONSTANT 0).  When the
warp scale is below 0.5 the part of the image the chip covers is first area-downscaled
(INTER_AREA) by that scale, so the warp itself runs at a scale of about 1.  This script
re-implements exactly that and compares, on real CaVI pairs, these chips:

A. five-point warp to the template derived from dlib's 68-point mean face
   (``--template-a``, the one ``src/align.rs`` ships);
B. five-point warp to an *empirical* template: dlib's own alignment
   (``get_frontal_face_detector`` + ``shape_predictor_5_face_landmarks.dat`` +
   ``get_face_chip``) of ``--template-photos`` CaVI photos of identities not used for the
   photo<->photo evaluation, run through MTCNN, landmarks averaged in the coordinates of the
   150x150 padding-0.25 chip: the template with which MTCNN points reproduce dlib's chips.
   MTCNN runs on dlib's 300x300 chip at padding 1.0 (the same transform with 75 px of real
   image around the 150x150 chip; points minus 75), because on the tight 150x150 chip the
   face fills the frame, MTCNN's box runs past its edges and its landmarks scatter.
   Bt: the same on the tight 150x150 chip itself, for comparison;
C. dlib's own alignment end to end (upper reference; only where dlib finds a face);
D. crop-only: the MTCNN box grown by ``margin`` x its size on each side, squared (side =
   max(w, h) * (1 + 2 margin), same centre), cropped (black outside the image) and resized to
   150x150 with ``cv2.INTER_AREA``; one variant per ``--margins`` value (``D0.2`` ...).

Every chip goes through the ONNX descriptor (N x 3 x 150 x 150 float RGB 0..255); descriptors
are L2-normalised and pairs are scored by Euclidean distance.

Pair sets:

1. photo<->photo: ``--photos-per-identity`` CaVI photos of each evaluation identity (labels
   from ``manifest.csv``; photos whose bytes occur under two identities are dropped), kept
   where MTCNN finds a face (the largest is used); ``--pairs`` same-identity and ``--pairs``
   different-identity pairs drawn with ``--seed``.
2. caricature<->photo: the first ``--pairs`` same-person and the first ``--pairs``
   different-person lines of ``cavi/protocol/testing_1.txt`` (the file lists every same pair
   first), paths resolved case-insensitively against the manifest, labels from the protocol.

For each variant: ROC AUC, best accuracy over distance thresholds (and that threshold), on
the pairs where the variant's detector found both faces and on the subset common to all
variants; and the mean distance between a face's descriptor and its variant-C descriptor.

Needs ``opencv-python-headless`` in the venv besides ``scripts/requirements.txt``
(``scripts/.venv/bin/pip install opencv-python-headless==4.10.0.84``).  Data is read in place.
About 10 minutes on 2 CPU cores with the defaults.

Usage::

    scripts/.venv/bin/python scripts/measure_align_template.py [--data ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import time
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import dlib
import face_recognition_models
import numpy as np
import onnxruntime as ort
import torch
from facenet_pytorch import MTCNN
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
DEFAULT_ONNX = os.path.join(REPO_ROOT, "models", "dlib_resnet_v1.onnx")
CHIP = 150
DLIB_PADDING = 0.25
MIN_WARP_SCALE = 0.5  # as src/align.rs
# Template A: dlib's 68-point mean face, five points, 150x150 chip at padding 0.25.
TEMPLATE_A = np.array([[47.549, 46.599], [100.476, 46.599], [74.013, 76.562],
                       [50.415, 103.023], [97.610, 103.023]])
POINT_NAMES = ("left eye", "right eye", "nose", "left mouth", "right mouth")


# ----------------------------------------------------------------------------- geometry

def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (Umeyama, no reflection) taking ``src`` (5x2) to ``dst``.

    Same closed form as ``src/align.rs``: with centred points as complex numbers,
    ``a = sum(conj(s) d) / sum(|s|^2)``, ``t = mean(d) - a mean(s)``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    norm = float((s ** 2).sum())
    if norm < 1e-9:
        raise ValueError("degenerate landmarks")
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / norm
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    tx = md[0] - (a * ms[0] - b * ms[1])
    ty = md[1] - (b * ms[0] + a * ms[1])
    return np.array([[a, -b, tx], [b, a, ty]])


def affine_scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))


def chip_footprint(m: np.ndarray, size: int, width: int, height: int
                   ) -> Optional[Tuple[int, int, int, int]]:
    """(x, y, w, h): the clipped image rectangle, with a 2-pixel border, the chip reads."""
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0 = int(max(np.floor(pts[:, 0].min()) - 2.0, 0.0))
    y0 = int(max(np.floor(pts[:, 1].min()) - 2.0, 0.0))
    x1 = int(min(np.ceil(pts[:, 0].max()) + 2.0, float(width)))
    y1 = int(min(np.ceil(pts[:, 1].max()) + 2.0, float(height)))
    if x1 > x0 + 1 and y1 > y0 + 1:
        return x0, y0, x1 - x0, y1 - y0
    return None


def warp(img: np.ndarray, m: np.ndarray, size: int = CHIP) -> Tuple[np.ndarray, bool]:
    """The chip (and whether the image was downscaled first), as ``align::warp`` in Rust.

    Below a warp scale of 0.5 the footprint is cropped and INTER_AREA-resized by the scale;
    the transform is then composed as ``x = roi_x + x' / fx`` (the same convention as
    ``Affine::after_crop_and_resize``).
    """
    scale = affine_scale(m)
    downscaled = False
    if scale < MIN_WARP_SCALE:
        roi = chip_footprint(m, size, img.shape[1], img.shape[0])
        if roi is not None:
            x, y, w, h = roi
            nw, nh = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
            img = cv2.resize(img[y:y + h, x:x + w], (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / w, nh / h
            a, b, c = m[0]
            d, e, f = m[1]
            m = np.array([[a / fx, b / fy, a * x + b * y + c],
                          [d / fx, e / fy, d * x + e * y + f]])
            downscaled = True
    chip = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return chip, downscaled


def crop_only(img: np.ndarray, box: np.ndarray, margin: float, size: int = CHIP) -> np.ndarray:
    """Box grown by ``margin`` x its size per side, squared, cropped (black outside), INTER_AREA."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    n = max(int(round(side)), 1)
    ox, oy = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    canvas = np.zeros((n, n, 3), np.uint8)
    h, w = img.shape[:2]
    sx0, sy0 = max(ox, 0), max(oy, 0)
    sx1, sy1 = min(ox + n, w), min(oy + n, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox] = img[sy0:sy1, sx0:sx1]
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------- models

class Detectors:
    """MTCNN (facenet-pytorch defaults, as the Rust port) and dlib's detector + 5 points."""

    def __init__(self) -> None:
        torch.set_num_threads(1)  # far faster than 2 threads for MTCNN's small convolutions
        self.mtcnn = MTCNN(keep_all=True, device="cpu")
        self.dlib_detector = dlib.get_frontal_face_detector()
        self.dlib_shape = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location())

    def mtcnn_largest(self, img: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(box x1,y1,x2,y2; 5x2 landmarks) of the largest MTCNN face, or None."""
        boxes, _, points = self.mtcnn.detect(Image.fromarray(img), landmarks=True)
        if boxes is None or len(boxes) == 0:
            return None
        boxes, points = np.asarray(boxes, np.float64), np.asarray(points, np.float64)
        i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        return boxes[i], points[i]

    def mtcnn_central(self, chip: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The MTCNN face whose box centre is nearest the centre of ``chip``, or None."""
        boxes, _, points = self.mtcnn.detect(Image.fromarray(chip), landmarks=True)
        if boxes is None or len(boxes) == 0:
            return None
        boxes, points = np.asarray(boxes, np.float64), np.asarray(points, np.float64)
        centre = np.array([chip.shape[1], chip.shape[0]]) / 2.0
        i = int(np.argmin(np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2.0 - centre, axis=1)))
        return boxes[i], points[i]

    def dlib_shape_of_largest(self, img: np.ndarray):
        """dlib's 5-point shape of the largest face dlib's detector finds, or None."""
        dets = self.dlib_detector(img, 1)
        if len(dets) == 0:
            return None
        return self.dlib_shape(img, max(dets, key=lambda r: r.area()))

    def dlib_chip(self, img: np.ndarray) -> Optional[np.ndarray]:
        """dlib's own 150x150 chip (padding 0.25) of the largest face, or None."""
        shape = self.dlib_shape_of_largest(img)
        if shape is None:
            return None
        chip = dlib.get_face_chip(img, shape, size=CHIP, padding=DLIB_PADDING)
        return np.ascontiguousarray(chip, dtype=np.uint8)


class Descriptor:
    """The ONNX dlib descriptor; returns L2-normalised 128-d vectors."""

    def __init__(self, path: str, batch: int = 64) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.batch = batch
        self.pending: List[Tuple[Tuple[str, str], np.ndarray]] = []
        self.out: Dict[Tuple[str, str], np.ndarray] = {}

    def add(self, key: Tuple[str, str], chip: np.ndarray) -> None:
        self.pending.append((key, chip))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = np.stack([c.transpose(2, 0, 1) for _, c in self.pending]).astype(np.float32)
        y = self.sess.run(["descriptor"], {"input": x})[0].astype(np.float64)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        for (key, _), v in zip(self.pending, y):
            self.out[key] = v
        self.pending = []


def load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


# ----------------------------------------------------------------------------- data

def read_manifest(data: str) -> List[Dict[str, str]]:
    with open(os.path.join(data, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


def file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def protocol_pairs(data: str, by_lower: Dict[str, Dict[str, str]], n: int
                   ) -> Tuple[List[Tuple[str, str, int]], Dict[str, int]]:
    """First ``n`` same and first ``n`` different pairs of testing_1.txt (resolvable ones)."""
    same: List[Tuple[str, str, int]] = []
    diff: List[Tuple[str, str, int]] = []
    stats = {"unresolved": 0, "label_disagrees_with_manifest": 0}
    with open(os.path.join(data, "cavi", "protocol", "testing_1.txt")) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 5:
                continue
            label = int(parts[4])
            bucket = same if label == 1 else diff
            if len(bucket) >= n:
                if len(same) >= n and len(diff) >= n:
                    break
                continue
            rows = [by_lower.get(("cavi/" + p.replace("\\", "/")).lower()) for p in (parts[1], parts[3])]
            if rows[0] is None or rows[1] is None:
                stats["unresolved"] += 1
                continue
            if (rows[0]["identity"] == rows[1]["identity"]) != (label == 1):
                stats["label_disagrees_with_manifest"] += 1
            bucket.append((rows[0]["path"], rows[1]["path"], label))
    return same + diff, stats


def split_identities(manifest: List[Dict[str, str]], data: str, cari_same_ids: set,
                     eval_image_set: set, n_template: int, per_identity: int, seed: int
                     ) -> Tuple[List[str], Dict[str, List[str]]]:
    """Template photos (identities disjoint from the photo evaluation, preferring identities
    absent from the caricature same-pairs, images absent from every evaluation set) and the
    photo-evaluation pool, identity -> photos."""
    photos: Dict[str, List[str]] = defaultdict(list)
    for r in manifest:
        if r["modality"] == "photo" and r["path"].startswith("cavi/Real/") and r["identity"]:
            photos[r["identity"]].append(r["path"])
    # Drop photos whose bytes appear under more than one identity (conflicting labels).
    owners: Dict[str, set] = defaultdict(set)
    sha: Dict[str, str] = {}
    for ident, paths in photos.items():
        for p in paths:
            sha[p] = file_sha(os.path.join(data, p))
            owners[sha[p]].add(ident)
    for ident in photos:
        photos[ident] = sorted(p for p in photos[ident] if len(owners[sha[p]]) == 1)
    ids = sorted(i for i in photos if len(photos[i]) >= 2)
    rng = random.Random(seed)
    rng.shuffle(ids)
    ordered = [i for i in ids if i not in cari_same_ids] + [i for i in ids if i in cari_same_ids]
    template: List[str] = []
    template_ids = set()
    for ident in ordered:
        if len(template) >= n_template:
            break
        cand = [p for p in photos[ident] if p not in eval_image_set]
        rng.shuffle(cand)
        template += cand[:10]
        template_ids.add(ident)
    pool = {}
    for ident in ids:
        if ident in template_ids:
            continue
        cand = list(photos[ident])
        rng.shuffle(cand)
        pool[ident] = sorted(cand[:per_identity])
    return template[:n_template], pool


def photo_pairs(found: Dict[str, List[str]], n: int, seed: int) -> List[Tuple[str, str, int]]:
    """``n`` same-identity and ``n`` different-identity pairs among photos with a face."""
    rng = random.Random(seed + 1)
    same_all = [(a, b) for ps in found.values() for i, a in enumerate(ps) for b in ps[i + 1:]]
    same_all.sort()
    same = rng.sample(same_all, min(n, len(same_all)))
    flat = sorted((p, i) for i, ps in found.items() for p in ps)
    diff = set()
    while len(diff) < n:
        (a, ia), (b, ib) = rng.sample(flat, 2)
        if ia != ib:
            diff.add((min(a, b), max(a, b)))
    return [(a, b, 1) for a, b in same] + [(a, b, 0) for a, b in sorted(diff)]


# ----------------------------------------------------------------------------- metrics

def roc_auc(dist: np.ndarray, label: np.ndarray) -> float:
    """P(distance of a same pair < distance of a different pair), ties counted half."""
    score = -dist
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = label == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def best_accuracy(dist: np.ndarray, label: np.ndarray) -> Tuple[float, float]:
    """(best accuracy of "same iff distance < t", that t as a midpoint between distances)."""
    order = np.argsort(dist, kind="mergesort")
    d, lab = dist[order], label[order]
    n = len(d)
    same_below = np.concatenate([[0], np.cumsum(lab == 1)])        # same pairs among the first k
    diff_above = (lab == 0).sum() - np.concatenate([[0], np.cumsum(lab == 0)])
    correct = same_below + diff_above                               # threshold after k pairs
    valid = np.ones(n + 1, bool)
    valid[1:n] = d[1:] > d[:-1]                                     # cannot split ties
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        t = d[0] - 1e-6
    elif k == n:
        t = d[-1] + 1e-6
    else:
        t = (d[k - 1] + d[k]) / 2.0
    return float(correct[k] / n), float(t)


# ----------------------------------------------------------------------------- main

def build_template(paths: Sequence[str], data: str, det: Detectors
                   ) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """MTCNN's landmarks on dlib's own chips of ``paths``: per kind, (mean, std, median).

    ``"tight"`` runs MTCNN on the 150x150 chip itself (padding 0.25); the face fills that chip
    and MTCNN's box runs past its edges.  ``"context"`` runs it on dlib's 300x300 chip at
    padding 1.0 (the same transform, with 75 px of real image around the 150 chip) and
    subtracts 75.
    """
    pts: Dict[str, List[np.ndarray]] = {"tight": [], "context": []}
    stats = {"images": len(paths), "dlib_missed": 0, "mtcnn_missed_tight": 0, "mtcnn_missed_context": 0}
    for p in paths:
        img = load_rgb(os.path.join(data, p))
        shape = det.dlib_shape_of_largest(img)
        if shape is None:
            stats["dlib_missed"] += 1
            continue
        for kind, size, padding in (("tight", CHIP, DLIB_PADDING), ("context", 2 * CHIP, 1.0)):
            chip = np.ascontiguousarray(dlib.get_face_chip(img, shape, size=size, padding=padding))
            face = det.mtcnn_central(chip)
            if face is None:
                stats[f"mtcnn_missed_{kind}"] += 1
                continue
            pts[kind].append(face[1] - (size - CHIP) / 2.0)
    out = {}
    for kind, lst in pts.items():
        arr = np.stack(lst)
        stats[f"used_{kind}"] = len(arr)
        out[kind] = (arr.mean(0), arr.std(0), np.median(arr, 0))
    out["stats"] = stats  # type: ignore[assignment]
    return out


def process_images(paths: Iterable[str], data: str, det: Detectors, desc: Descriptor,
                   templates: Dict[str, np.ndarray], margins: Sequence[float]
                   ) -> Dict[str, Dict[str, bool]]:
    """Descriptors for every variant of every image (into ``desc.out``); per-image flags."""
    info: Dict[str, Dict[str, bool]] = {}
    paths = list(paths)
    t0 = time.time()
    for n, p in enumerate(paths):
        img = load_rgb(os.path.join(data, p))
        face = det.mtcnn_largest(img)
        flags = {"mtcnn": face is not None, "dlib": False, "downscaled": False}
        if face is not None:
            box, lm = face
            for name, tpl in templates.items():
                chip, down = warp(img, similarity_transform(lm, tpl))
                flags["downscaled"] |= down
                desc.add((p, name), chip)
            for m in margins:
                desc.add((p, f"D{m:g}"), crop_only(img, box, m))
        chip = det.dlib_chip(img)
        if chip is not None:
            flags["dlib"] = True
            desc.add((p, "C"), chip)
        info[p] = flags
        if (n + 1) % 250 == 0:
            el = time.time() - t0
            print(f"  {n + 1}/{len(paths)} images, {el:.0f} s, ~{el / (n + 1) * (len(paths) - n - 1):.0f} s left",
                  file=sys.stderr, flush=True)
    desc.flush()
    return info


def evaluate(pairs: List[Tuple[str, str, int]], info: Dict[str, Dict[str, bool]],
             vecs: Dict[Tuple[str, str], np.ndarray], variants: Sequence[str]) -> dict:
    """Per variant: metrics on its own pairs and on the pairs common to all variants."""
    def has(p: str, v: str) -> bool:
        return (p, v) in vecs

    common = [q for q in pairs if all(has(q[0], v) and has(q[1], v) for v in variants)]
    res = {"pairs": len(pairs), "same": sum(q[2] for q in pairs),
           "common_pairs": len(common), "common_same": sum(q[2] for q in common), "variants": {}}
    for v in variants:
        row = {}
        for tag, subset in (("own", [q for q in pairs if has(q[0], v) and has(q[1], v)]),
                            ("common", common)):
            if not subset or len({q[2] for q in subset}) < 2:
                continue
            d = np.array([np.linalg.norm(vecs[(a, v)] - vecs[(b, v)]) for a, b, _ in subset])
            lab = np.array([q[2] for q in subset])
            acc, thr = best_accuracy(d, lab)
            row[tag] = {"n": len(subset), "auc": roc_auc(d, lab), "acc": acc, "threshold": thr,
                        "mean_same": float(d[lab == 1].mean()), "mean_diff": float(d[lab == 0].mean())}
        images = sorted({p for q in pairs for p in q[:2]})
        moved = [np.linalg.norm(vecs[(p, v)] - vecs[(p, "C")]) for p in images
                 if has(p, v) and has(p, "C")]
        row["moved_vs_C"] = float(np.mean(moved)) if moved else float("nan")
        row["moved_n"] = len(moved)
        res["variants"][v] = row
    return res


def print_table(title: str, res: dict, info: Dict[str, Dict[str, bool]],
                pairs: List[Tuple[str, str, int]]) -> None:
    images = sorted({p for q in pairs for p in q[:2]})
    print(f"\n{title}: {res['pairs']} pairs ({res['same']} same), {len(images)} images; "
          f"MTCNN missed {sum(not info[p]['mtcnn'] for p in images)}, "
          f"dlib missed {sum(not info[p]['dlib'] for p in images)}; "
          f"common subset {res['common_pairs']} pairs ({res['common_same']} same)")
    print(f"  {'variant':8} {'pairs':>6} {'AUC':>7} {'acc':>7} {'thr':>6} | "
          f"{'common AUC':>10} {'acc':>7} {'thr':>6} | {'moved vs C':>10} {'n':>5}")
    for v, row in res["variants"].items():
        own, com = row.get("own"), row.get("common")
        o = f"{own['n']:6d} {own['auc']:7.4f} {own['acc']:7.4f} {own['threshold']:6.3f}" if own else " " * 29
        c = f"{com['auc']:10.4f} {com['acc']:7.4f} {com['threshold']:6.3f}" if com else " " * 26
        print(f"  {v:8} {o} | {c} | {row['moved_vs_C']:10.4f} {row['moved_n']:5d}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Compare 5-point alignment templates (and crop-only) for the dlib descriptor "
                    "on CaVI photo<->photo and caricature<->photo pairs.")
    ap.add_argument("--data", default=DEFAULT_DATA, help="shared data root (default: %(default)s)")
    ap.add_argument("--onnx", default=DEFAULT_ONNX, help="descriptor model (default: %(default)s)")
    ap.add_argument("--pairs", type=int, default=1500,
                    help="same and different pairs per pair set, each (default: %(default)s)")
    ap.add_argument("--photos-per-identity", type=int, default=6,
                    help="photos per identity in the photo<->photo pool (default: %(default)s)")
    ap.add_argument("--template-photos", type=int, default=400,
                    help="photos for the empirical template B (default: %(default)s)")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4],
                    help="crop-only margins, fraction of the box per side (default: %(default)s)")
    ap.add_argument("--template-a", type=float, nargs=10, metavar="XY",
                    default=TEMPLATE_A.ravel().tolist(),
                    help="template A as x1 y1 ... x5 y5 in 150x150 chip pixels (default: dlib mean face)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    ap.add_argument("--json", help="also write all results to this JSON file")
    args = ap.parse_args(argv)

    data = args.data
    if not os.path.exists(os.path.join(data, "manifest.csv")):
        print(f"no manifest.csv under {data}; pass --data", file=sys.stderr)
        return 2
    t_start = time.time()
    manifest = read_manifest(data)
    by_lower = {r["path"].lower(): r for r in manifest}

    cari_pairs, proto_stats = protocol_pairs(data, by_lower, args.pairs)
    path_identity = {r["path"]: r["identity"] for r in manifest}
    cari_same_ids = {path_identity[a] for a, _, lab in cari_pairs if lab == 1}
    cari_images = {p for q in cari_pairs for p in q[:2]}
    template_paths, pool = split_identities(manifest, data, cari_same_ids, cari_images,
                                            args.template_photos, args.photos_per_identity, args.seed)
    print(f"data {data}; dlib {dlib.__version__}, opencv {cv2.__version__}, onnxruntime {ort.__version__}")
    print(f"template B: {len(template_paths)} photos of "
          f"{len({path_identity[p] for p in template_paths})} identities; photo pool: "
          f"{sum(map(len, pool.values()))} photos of {len(pool)} identities; caricature pairs: "
          f"{len(cari_pairs)} ({proto_stats['unresolved']} protocol lines skipped as unresolvable, "
          f"{proto_stats['label_disagrees_with_manifest']} labels disagree with the manifest)")

    det = Detectors()
    tpl = build_template(template_paths, data, det)
    print(f"\nempirical templates (MTCNN on dlib chips; {tpl['stats']}):")
    template_a = np.array(args.template_a).reshape(5, 2)
    for kind, label in (("context", "B  (300x300 chip at padding 1.0, minus 75 px; used as B)"),
                        ("tight", "Bt (MTCNN on the 150x150 padding-0.25 chip itself)")):
        mean, std, med = tpl[kind]
        print(f" {label}:")
        for name, (x, y), (sx, sy), (mx, my), (ax, ay) in zip(POINT_NAMES, mean, std, med, template_a):
            print(f"  {name:12} ({x:7.3f}, {y:7.3f})  std ({sx:5.2f}, {sy:5.2f})  "
                  f"median ({mx:7.3f}, {my:7.3f})  mean-A ({x - ax:+6.2f}, {y - ay:+6.2f})")
        print("  as Rust: [" + ", ".join(f"[{x:.3f}, {y:.3f}]" for x, y in mean) + "]")

    templates = {"A": template_a, "B": tpl["context"][0], "Bt": tpl["tight"][0]}
    variants = list(templates) + ["C"] + [f"D{m:g}" for m in args.margins]
    desc = Descriptor(args.onnx)
    pool_paths = sorted(p for ps in pool.values() for p in ps)
    all_paths = sorted(set(pool_paths) | cari_images)
    print(f"\ndescribing {len(all_paths)} images x {len(variants)} variants ...", flush=True)
    info = process_images(all_paths, data, det, desc, templates, args.margins)

    found = {i: [p for p in ps if info[p]["mtcnn"]] for i, ps in pool.items()}
    found = {i: ps for i, ps in found.items() if ps}
    pp = photo_pairs(found, args.pairs, args.seed)
    print(f"photo pool: MTCNN missed {sum(not info[p]['mtcnn'] for p in pool_paths)} of {len(pool_paths)}; "
          f"downscaled before warping: {sum(info[p]['downscaled'] for p in all_paths)} of {len(all_paths)} images")
    res_photo = evaluate(pp, info, desc.out, variants)
    res_cari = evaluate(cari_pairs, info, desc.out, variants)
    print_table("photo<->photo", res_photo, info, pp)
    print_table("caricature<->photo (testing_1)", res_cari, info, cari_pairs)

    five_point = {v: r for v, r in res_photo["variants"].items() if v != "C"}
    best = max(five_point, key=lambda v: five_point[v]["own"]["auc"])
    best_d = max((v for v in five_point if v.startswith("D")), key=lambda v: five_point[v]["own"]["auc"])
    print(f"\nbest MTCNN-based variant on photo<->photo (AUC): {best}; threshold maximising accuracy "
          f"{res_photo['variants'][best]['own']['threshold']:.4f} (unit-vector Euclidean distance, "
          f"accuracy {res_photo['variants'][best]['own']['acc']:.4f}); best crop-only margin: {best_d}")
    print(f"total {time.time() - t_start:.0f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"templates": {k: v.tolist() for k, v in templates.items()},
                       "template_std": {k: tpl[k][1].tolist() for k in ("context", "tight")},
                       "template_stats": tpl["stats"],
                       "photo": res_photo, "caricature": res_cari, "best": best,
                       "best_crop_only": best_d, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
