#!/usr/bin/env python3
"""Verify ``models/dlib_resnet_v1.onnx`` against dlib itself, and (with ``--record``)
write the golden reference used by the Rust tests.

Pipeline (dlib's own): ``dlib.get_frontal_face_detector()`` (1 upsample) ->
``shape_predictor_5_face_landmarks.dat`` -> ``dlib.get_face_chip(img, shape, size=150,
padding=0.25)``.  Each 150x150 RGB uint8 chip goes through

* dlib: ``face_recognition_model_v1(dat).compute_face_descriptor(chip)`` (the overload
  for an already aligned 150x150 chip), and
* onnxruntime: the ONNX model on the chip as float32 0..255, N x 3 x 150 x 150 (all
  chips in one batch, which also exercises the dynamic batch dimension),

and the maximum absolute difference of the two 128-d descriptors is printed per chip and
overall.  The script exits non-zero when any difference exceeds ``--tol`` (1e-5) or when
fewer than ``--min-chips`` faces were found.

Faces come from the public test images under ``/work/shared/data/faces`` and the CaVI
real photos under ``/work/shared/data/cavi/Real`` (read in place; nothing is copied).

``--record`` additionally writes

* ``tests/golden/dlib_astronaut_chip.png``: the chip dlib extracts from
  ``/work/shared/data/faces/skimage/astronaut.png`` (public domain), lossless PNG;
* ``tests/golden/dlib_reference.json``: ``{"source": "dlib <version>
  compute_face_descriptor", "model_sha256": <sha256 of the .dat the descriptor was
  computed with>, "chip": "tests/golden/dlib_astronaut_chip.png", "descriptor": [128
  floats]}``, the descriptor being dlib's on the PNG *as re-read*, so the Rust test
  feeds bit-identical input.

Without ``--record`` an existing golden pair is checked too (ONNX on the PNG vs. the
recorded dlib descriptor).

Usage::

    scripts/.venv/bin/python scripts/verify_dlib.py [--record] [--onnx models/dlib_resnet_v1.onnx]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

import dlib
import face_recognition_models
import onnxruntime as ort

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ONNX = os.path.join(REPO_ROOT, "models", "dlib_resnet_v1.onnx")
GOLDEN_DIR = os.path.join(REPO_ROOT, "tests", "golden")
GOLDEN_CHIP_REL = "tests/golden/dlib_astronaut_chip.png"
GOLDEN_JSON_REL = "tests/golden/dlib_reference.json"
DATA = "/work/shared/data"
ASTRONAUT = os.path.join(DATA, "faces", "skimage", "astronaut.png")
CHIP_SIZE = 150
CHIP_PADDING = 0.25
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_rgb(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB, C-contiguous (what dlib's numpy bindings expect)."""
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


class DlibPipeline:
    """dlib's detector + 5-point landmarks + chip extraction + descriptor network."""

    def __init__(self, dat_path: str):
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location())
        self.net = dlib.face_recognition_model_v1(dat_path)

    def chips(self, img: np.ndarray, max_faces: int) -> List[np.ndarray]:
        """Aligned 150x150 chips of the largest ``max_faces`` faces in ``img``."""
        dets = sorted(self.detector(img, 1), key=lambda d: -d.area())[:max_faces]
        out = []
        for det in dets:
            shape = self.shape_predictor(img, det)
            chip = dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            out.append(np.ascontiguousarray(chip, dtype=np.uint8))
        return out

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
        return np.array(self.net.compute_face_descriptor(chip), dtype=np.float64)


class OnnxModel:
    def __init__(self, path: str):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.output = self.sess.get_outputs()[0].name

    def descriptors(self, chips: List[np.ndarray]) -> np.ndarray:
        x = np.stack([c.transpose(2, 0, 1) for c in chips]).astype(np.float32)  # N,3,150,150
        return self.sess.run([self.output], {self.input: x})[0].astype(np.float64)


def collect_images(faces_per_source: int, cavi_people: int) -> List[Tuple[str, int]]:
    """(path, max faces to take) in a deterministic order."""
    items: List[Tuple[str, int]] = [(ASTRONAUT, 1)]
    faces_root = os.path.join(DATA, "faces")
    for sub in sorted(os.listdir(faces_root)):
        paths = sorted(
            p for p in glob.glob(os.path.join(faces_root, sub, "**", "*"), recursive=True)
            if p.lower().endswith(IMAGE_EXTS) and p != ASTRONAUT)
        items += [(p, 2) for p in paths[:faces_per_source]]
    real_root = os.path.join(DATA, "cavi", "Real")
    if os.path.isdir(real_root):
        for person in sorted(os.listdir(real_root))[:cavi_people]:
            paths = sorted(p for p in glob.glob(os.path.join(real_root, person, "*"))
                           if p.lower().endswith(IMAGE_EXTS))
            items += [(p, 1) for p in paths[:1]]
    return items


def record_golden(pipe: DlibPipeline, model: OnnxModel, dat_sha: str) -> float:
    """Write the astronaut chip + dlib reference descriptor; returns ONNX max abs diff."""
    chips = pipe.chips(load_rgb(ASTRONAUT), 1)
    if not chips:
        raise SystemExit(f"no face found in {ASTRONAUT}")
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    chip_path = os.path.join(REPO_ROOT, GOLDEN_CHIP_REL)
    Image.fromarray(chips[0]).save(chip_path, format="PNG", optimize=True)
    reread = load_rgb(chip_path)
    if not np.array_equal(reread, chips[0]):
        raise SystemExit("PNG round trip changed the chip")
    desc = pipe.descriptor(reread)
    ref = {
        "source": f"dlib {dlib.__version__} compute_face_descriptor",
        "model_sha256": dat_sha,
        "chip": GOLDEN_CHIP_REL,
        # dlib computes in float32 and returns doubles; repr() keeps them exact.
        "descriptor": [float(v) for v in desc],
    }
    with open(os.path.join(REPO_ROOT, GOLDEN_JSON_REL), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    diff = float(np.max(np.abs(model.descriptors([reread])[0] - desc)))
    print(f"recorded {GOLDEN_CHIP_REL} and {GOLDEN_JSON_REL} "
          f"(|descriptor|={np.linalg.norm(desc):.6f}, onnx max abs diff {diff:.3e})")
    return diff


def check_golden(model: OnnxModel, dat_sha: str) -> Optional[float]:
    json_path = os.path.join(REPO_ROOT, GOLDEN_JSON_REL)
    if not os.path.exists(json_path):
        print(f"no {GOLDEN_JSON_REL}; run with --record to create it")
        return None
    with open(json_path) as f:
        ref = json.load(f)
    if ref["model_sha256"] != dat_sha:
        print(f"warning: golden was recorded with model sha256 {ref['model_sha256']}")
    chip = load_rgb(os.path.join(REPO_ROOT, ref["chip"]))
    diff = float(np.max(np.abs(model.descriptors([chip])[0] - np.array(ref["descriptor"]))))
    print(f"golden {ref['chip']}: onnx vs recorded dlib descriptor max abs diff {diff:.3e}")
    return diff


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Check the dlib ONNX conversion against dlib.")
    ap.add_argument("--onnx", default=DEFAULT_ONNX, help="ONNX model (default: %(default)s)")
    ap.add_argument("--dat", default=face_recognition_models.face_recognition_model_location(),
                    help="dlib .dat model (default: the face_recognition_models one)")
    ap.add_argument("--tol", type=float, default=1e-5, help="max abs difference allowed")
    ap.add_argument("--min-chips", type=int, default=20, help="fail with fewer chips than this")
    ap.add_argument("--faces-per-source", type=int, default=6,
                    help="images taken from each folder of /work/shared/data/faces")
    ap.add_argument("--cavi-people", type=int, default=15,
                    help="CaVI Real identities to take one photo from")
    ap.add_argument("--record", action="store_true",
                    help="write tests/golden/dlib_astronaut_chip.png and dlib_reference.json")
    args = ap.parse_args(argv)

    dat_sha = sha256_file(args.dat)
    print(f"dlib {dlib.__version__}, onnxruntime {ort.__version__}")
    print(f"dat  {args.dat} sha256 {dat_sha}")
    print(f"onnx {args.onnx} sha256 {sha256_file(args.onnx)}")
    pipe = DlibPipeline(args.dat)
    model = OnnxModel(args.onnx)

    names: List[str] = []
    chips: List[np.ndarray] = []
    for path, max_faces in collect_images(args.faces_per_source, args.cavi_people):
        try:
            img = load_rgb(path)
        except Exception as e:  # unreadable / odd image formats
            print(f"skip {path}: {e}")
            continue
        for j, chip in enumerate(pipe.chips(img, max_faces)):
            names.append(f"{os.path.relpath(path, DATA)}#{j}")
            chips.append(chip)

    ref = np.stack([pipe.descriptor(c) for c in chips])
    got = model.descriptors(chips)
    diffs = np.max(np.abs(got - ref), axis=1)
    for name, d, r in zip(names, diffs, ref):
        print(f"{d:.3e}  |ref|={np.linalg.norm(r):.4f}  {name}")
    overall = float(diffs.max()) if len(diffs) else float("inf")
    print(f"chips: {len(chips)}; max abs difference overall: {overall:.3e} "
          f"(mean of per-chip max {float(diffs.mean()):.3e}); tolerance {args.tol:g}")

    ok = len(chips) >= args.min_chips and overall <= args.tol
    if len(chips) < args.min_chips:
        print(f"FAIL: only {len(chips)} chips (< {args.min_chips})")
    golden_diff = record_golden(pipe, model, dat_sha) if args.record else check_golden(model, dat_sha)
    if golden_diff is not None and golden_diff > args.tol:
        print(f"FAIL: golden chip difference {golden_diff:.3e} > {args.tol:g}")
        ok = False
    if overall > args.tol:
        print(f"FAIL: max abs difference {overall:.3e} > {args.tol:g}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
