#!/usr/bin/env python3
"""Record facenet-pytorch MTCNN reference outputs for the Rust tests.

Writes two JSON files:

``tests/golden/mtcnn_nets.json``
    Per net (pnet, rnet, onet): one real input tensor (flat, row-major NCHW,
    with its shape) and the torch outputs for it, so a Rust test can feed the
    very same tensor to the exported ONNX model and compare (tolerance 1e-4).
    All inputs come from ``faces/skimage/astronaut.png``:

    * pnet: the whole 512x512 image area-resized to 48x48 -> 1x3x48x48
      (outputs reg 1x4x19x19, prob 1x2x19x19);
    * rnet: two crops area-resized to 24x24 -> 2x3x24x24: the face
      (x 181..268, y 62..172) and a non-face (the space-shuttle model);
    * onet: the same two crops area-resized to 48x48 -> 2x3x48x48.

    "Area-resized" is ``torch.nn.functional.interpolate(mode='area')`` on the
    float32 0..255 RGB pixels, as facenet-pytorch does; the result is then
    normalised with ``(x - 127.5) * 0.0078125``. Floats are rounded to 7
    significant digits; the outputs are computed by torch from the *rounded*
    input (parsed back to float32), so input and outputs are consistent.

``tests/golden/mtcnn_detections.json``
    Full-cascade detections of ``facenet_pytorch.MTCNN(keep_all=True,
    device='cpu')`` with default settings, via ``mtcnn.detect(img,
    landmarks=True)`` on images loaded with PIL and ``convert('RGB')``. Faces
    are in facenet-pytorch's output order (select_largest=True: largest box
    area first). Values are the float32 results at full precision. Each image
    also carries ``rgb_sha256``, the sha256 of the decoded H x W x 3 uint8
    pixels, so a test can tell whether its own decoder produced the same
    pixels (JPEG decoders may differ by a few levels).

Usage (from the repository root)::

    scripts/.venv/bin/python scripts/record_mtcnn_reference.py
    scripts/.venv/bin/python scripts/record_mtcnn_reference.py --data ../shared/data --out-dir tests/golden
"""

import argparse
import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import interpolate

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "tests" / "golden"

NETS_IMAGE = "faces/skimage/astronaut.png"
# Crops for RNet/ONet: pixel rows y0..y1 and columns x0..x1, end exclusive.
CROPS = [
    {"label": "face", "x": [181, 268], "y": [62, 172]},
    {"label": "non-face (space shuttle model)", "x": [360, 460], "y": [40, 140]},
]

# Images for the full-cascade reference (relative to --data). The dlib group
# photos are added from DLIB_DIR (every .jpg).
DETECTION_IMAGES = [
    "faces/skimage/astronaut.png",
    "faces/facenet_pytorch/data/multiface.jpg",
    "faces/face_recognition/examples/obama.jpg",
    "faces/face_recognition/examples/two_people.jpg",
    "faces/face_recognition/examples/knn_examples/test/kit_with_rose.jpg",
]
DLIB_DIR = "faces/dlib_examples/examples/faces"

SETTINGS = {
    "min_face_size": 20,
    "thresholds": [0.6, 0.7, 0.7],
    "factor": 0.709,
    "keep_all": True,
    "select_largest": True,
    "device": "cpu",
    "order": "largest box area first ((x2-x1)*(y2-y1), descending), as MTCNN.detect with select_largest=True",
}


def source_string():
    return f"facenet-pytorch {metadata.version('facenet-pytorch')} / torch {torch.__version__.split('+')[0]}"


def round7(values):
    """Round to 7 significant digits (as Python floats, for JSON)."""
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def tensor_entry(t):
    return {"shape": list(t.shape), "data": round7(t.numpy())}


def load_rgb(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def to_nchw_float(img):
    """PIL RGB image -> 1x3xHxW float32 tensor of 0..255 values (as detect_face builds it)."""
    return torch.as_tensor(np.uint8(img)[None].copy()).permute(0, 3, 1, 2).type(torch.float32)


def normalise(x):
    return (x - 127.5) * 0.0078125


def rounded_input(x):
    """Round a tensor to 7 significant digits and return it as float32 (what the JSON holds)."""
    return torch.tensor(np.asarray(round7(x.numpy()), dtype=np.float32).reshape(tuple(x.shape)))


def record_nets(data_root):
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    nets = {"pnet": PNet().eval(), "rnet": RNet().eval(), "onet": ONet().eval()}
    names = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}

    img = to_nchw_float(load_rgb(data_root / NETS_IMAGE))
    crops = [img[:, :, c["y"][0]:c["y"][1], c["x"][0]:c["x"][1]] for c in CROPS]
    inputs = {
        "pnet": normalise(interpolate(img, size=(48, 48), mode="area")),
        "rnet": normalise(torch.cat([interpolate(c, size=(24, 24), mode="area") for c in crops])),
        "onet": normalise(torch.cat([interpolate(c, size=(48, 48), mode="area") for c in crops])),
    }

    out = {
        "source": source_string(),
        "image": NETS_IMAGE,
        "preprocessing": "torch interpolate(mode='area') of float32 RGB 0..255, then (x - 127.5) * 0.0078125; NCHW",
        "crops": CROPS,
        "rounding": "7 significant digits; outputs computed from the rounded input",
    }
    for name, net in nets.items():
        x = rounded_input(inputs[name])
        with torch.no_grad():
            outputs = net(x)
        out[name] = {
            "input_shape": list(x.shape),
            "input": round7(x.numpy()),
            "outputs": {o: tensor_entry(t) for o, t in zip(names[name], outputs)},
        }
        prob = outputs[-1]
        if name == "pnet":
            print(f"pnet: input {list(x.shape)}, max face prob {prob[:, 1].max().item():.4f}")
        else:
            probs = ", ".join(f"{c['label'].split(' ')[0]} {p:.5f}" for c, p in zip(CROPS, prob[:, 1].tolist()))
            print(f"{name}: input {list(x.shape)}, face prob: {probs}")
    return out


def record_detections(data_root):
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    assert mtcnn.min_face_size == SETTINGS["min_face_size"] and mtcnn.factor == SETTINGS["factor"]
    assert list(mtcnn.thresholds) == SETTINGS["thresholds"] and mtcnn.select_largest

    rels = list(DETECTION_IMAGES[:1])
    rels += sorted(p.relative_to(data_root).as_posix() for p in (data_root / DLIB_DIR).glob("*.jpg"))
    rels += DETECTION_IMAGES[1:]

    images = []
    for rel in rels:
        path = data_root / rel
        img = load_rgb(path)
        rgb = np.uint8(img)
        with torch.no_grad():
            boxes, probs, points = mtcnn.detect(img, landmarks=True)
        faces = []
        if boxes is not None:
            for box, prob, pts in zip(boxes, probs, points):
                faces.append({
                    "box": [float(v) for v in box],
                    "score": float(prob),
                    "landmarks": [[float(x), float(y)] for x, y in pts],
                })
        images.append({
            "path": rel,
            "width": img.width,
            "height": img.height,
            "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "faces": faces,
        })
        print(f"{rel}: {img.width}x{img.height}, {len(faces)} faces")
    return {"source": source_string(), "settings": SETTINGS, "images": images}


def check_astronaut(det):
    """Sanity check against the known facenet-pytorch result for the astronaut."""
    faces = next(i for i in det["images"] if i["path"] == "faces/skimage/astronaut.png")["faces"]
    ok = (
        len(faces) == 1
        and np.allclose(faces[0]["box"], [181.051, 62.156, 267.747, 172.050], atol=0.01)
        and faces[0]["score"] > 0.9999
        and np.allclose(faces[0]["landmarks"][0], [205.01, 101.73], atol=0.01)
    )
    if not ok:
        print(f"ERROR: unexpected astronaut detection: {faces}", file=sys.stderr)
    return ok


def write_json(obj, path, indent):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"shared data root holding faces/ (default: {DEFAULT_DATA})")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"where to write mtcnn_nets.json and mtcnn_detections.json (default: {DEFAULT_OUT_DIR})")
    args = parser.parse_args()
    data_root = args.data.resolve()
    if not (data_root / NETS_IMAGE).exists():
        print(f"ERROR: {data_root / NETS_IMAGE} not found; pass --data", file=sys.stderr)
        return 2

    torch.set_grad_enabled(False)
    nets = record_nets(data_root)
    write_json(nets, args.out_dir / "mtcnn_nets.json", indent=None)
    det = record_detections(data_root)
    write_json(det, args.out_dir / "mtcnn_detections.json", indent=1)
    return 0 if check_astronaut(det) else 1


if __name__ == "__main__":
    sys.exit(main())
