#!/usr/bin/env python3
"""Export facenet-pytorch's MTCNN networks (PNet, RNet, ONet) to ONNX.

The pretrained weights are the ones shipped inside the facenet-pytorch wheel
(``facenet_pytorch/data/{p,r,o}net.pt``, i.e. ``pretrained=True``). Each net is
put in eval mode and exported with ``torch.onnx.export`` (opset 17):

=================  ====================  =====================================
file               input ``input``       outputs (in the nets' forward order)
=================  ====================  =====================================
mtcnn_pnet.onnx    N x 3 x H x W         ``reg``  N x 4 x h x w (box offsets)
                   (N, H, W dynamic)     ``prob`` N x 2 x h x w (softmax, dim 1;
                                                   channel 1 = face)
mtcnn_rnet.onnx    N x 3 x 24 x 24       ``reg`` N x 4, ``prob`` N x 2
mtcnn_onet.onnx    N x 3 x 48 x 48       ``reg`` N x 4, ``landmarks`` N x 10
                                         (x1..x5 then y1..y5, relative to the
                                         box), ``prob`` N x 2
=================  ====================  =====================================

For PNet, h = ceil((H - 2) / 2) - 4 and w likewise (conv3, maxpool 2/2 with
ceil_mode, conv3, conv3).

Inputs are RGB, channels first, normalised as ``(pixel - 127.5) * 0.0078125``
(0.0078125 = 1/128), exactly as ``facenet_pytorch.models.utils.detect_face``
does after area-resizing.

Every model carries ``metadata_props``: the source package and version, the
torch version, the weight file name and its sha256, and the normalisation.

After export the script checks, with onnxruntime on CPU, that the ONNX models
reproduce torch within ``--tol`` (default 1e-5, absolute) on real inputs: the
exact PNet pyramid images, RNet crops and ONet crops that facenet-pytorch's
``detect_face`` builds for a few real photos (captured with forward hooks). It
prints the max absolute difference per net and output, and exits with status
1 if any exceeds the tolerance.

Usage (from the repository root)::

    scripts/.venv/bin/python scripts/export_mtcnn.py
    scripts/.venv/bin/python scripts/export_mtcnn.py --out-dir models --data ../shared/data
"""

import argparse
import hashlib
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "models"
OPSET = 17

# Real photos used to build verification inputs (paths relative to --data).
CHECK_IMAGES = [
    "faces/skimage/astronaut.png",
    "faces/facenet_pytorch/data/multiface.jpg",
    "faces/dlib_examples/examples/faces/2008_002470.jpg",
]

# name -> (class name, weights file, output names, example input shape, dynamic input axes)
NETS = {
    "pnet": ("PNet", "pnet.pt", ["reg", "prob"], (1, 3, 64, 80), {0: "N", 2: "H", 3: "W"}),
    "rnet": ("RNet", "rnet.pt", ["reg", "prob"], (2, 3, 24, 24), {0: "N"}),
    "onet": ("ONet", "onet.pt", ["reg", "landmarks", "prob"], (2, 3, 48, 48), {0: "N"}),
}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_dir():
    import facenet_pytorch

    return Path(facenet_pytorch.__file__).resolve().parent / "data"


def load_nets():
    """Load PNet, RNet and ONet with the wheel's pretrained weights, in eval mode."""
    from facenet_pytorch.models import mtcnn

    nets = {}
    for name, (cls_name, _, _, _, _) in NETS.items():
        net = getattr(mtcnn, cls_name)(pretrained=True)
        net.eval()
        nets[name] = net
    return nets


def output_dynamic_axes(name, output_names):
    if name == "pnet":
        return {o: {0: "N", 2: "h", 3: "w"} for o in output_names}
    return {o: {0: "N"} for o in output_names}


def export(nets, out_dir):
    import onnx

    fp_version = metadata.version("facenet-pytorch")
    paths = {}
    for name, (cls_name, weights, output_names, example_shape, in_axes) in NETS.items():
        path = out_dir / f"mtcnn_{name}.onnx"
        example = torch.zeros(example_shape, dtype=torch.float32)
        dynamic_axes = {"input": in_axes}
        dynamic_axes.update(output_dynamic_axes(name, output_names))
        with torch.no_grad():
            torch.onnx.export(
                nets[name],
                (example,),
                str(path),
                export_params=True,
                opset_version=OPSET,
                do_constant_folding=True,
                input_names=["input"],
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
        model = onnx.load(str(path))
        props = {
            "source": f"facenet-pytorch {fp_version} (facenet_pytorch.models.mtcnn.{cls_name}, pretrained=True)",
            "torch_version": torch.__version__,
            "weights_file": f"facenet_pytorch/data/{weights}",
            "weights_sha256": sha256_file(weights_dir() / weights),
            "input": "RGB, NCHW, float32, (pixel - 127.5) * 0.0078125",
            "outputs": ", ".join(output_names),
        }
        if name == "onet":
            props["landmarks_layout"] = "x1..x5 then y1..y5, relative to the (w+1, h+1) of the input box"
        del model.metadata_props[:]
        for k, v in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        paths[name] = path
    return paths


def collect_real_inputs(nets, data_root):
    """Run facenet-pytorch's detect_face on real photos and capture every net input."""
    from PIL import Image
    from facenet_pytorch.models.utils.detect_face import detect_face

    captured = {name: [] for name in NETS}
    hooks = [
        nets[name].register_forward_pre_hook(lambda _m, args, name=name: captured[name].append(args[0].clone()))
        for name in NETS
    ]
    try:
        for rel in CHECK_IMAGES:
            path = data_root / rel
            if not path.exists():
                print(f"warning: {path} not found, skipped", file=sys.stderr)
                continue
            img = Image.open(path).convert("RGB")
            with torch.no_grad():
                detect_face(img, 20, nets["pnet"], nets["rnet"], nets["onet"], [0.6, 0.7, 0.7], 0.709, "cpu")
    finally:
        for h in hooks:
            h.remove()
    return captured


def verify(nets, paths, data_root, tol):
    import onnxruntime as ort

    captured = collect_real_inputs(nets, data_root)
    ok = True
    for name, (_, _, output_names, _, _) in NETS.items():
        inputs = captured[name]
        if not inputs:
            print(f"{name}: no real inputs captured (is --data right?)", file=sys.stderr)
            ok = False
            continue
        sess = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        max_diff = {o: 0.0 for o in output_names}
        n_items = 0
        for x in inputs:
            with torch.no_grad():
                ref = nets[name](x)
            got = sess.run(output_names, {"input": x.contiguous().numpy()})
            for o, r, g in zip(output_names, ref, got):
                assert tuple(r.shape) == g.shape, (name, o, tuple(r.shape), g.shape)
                max_diff[o] = max(max_diff[o], float(np.abs(r.numpy() - g).max()))
            n_items += x.shape[0]
        shapes = sorted({tuple(x.shape[2:]) for x in inputs})
        desc = f"{len(inputs)} batches, {n_items} items"
        if name == "pnet":
            desc += f", sizes {shapes[0]}..{shapes[-1]}"
        diffs = ", ".join(f"{o} {d:.3g}" for o, d in max_diff.items())
        worst = max(max_diff.values())
        status = "OK" if worst <= tol else "FAIL"
        print(f"{name}: max |torch - onnxruntime| {diffs} ({desc}) {status}")
        ok &= worst <= tol
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"where to write mtcnn_{{pnet,rnet,onet}}.onnx (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"shared data root holding faces/ (default: {DEFAULT_DATA})")
    parser.add_argument("--tol", type=float, default=1e-5,
                        help="max absolute torch/onnxruntime difference allowed (default: 1e-5)")
    parser.add_argument("--skip-check", action="store_true", help="export only, no onnxruntime check")
    args = parser.parse_args()

    torch.manual_seed(0)
    nets = load_nets()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    paths = export(nets, args.out_dir)
    for name, path in paths.items():
        print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {sha256_file(path)})")
    for _, weights, *_ in NETS.values():
        print(f"weights {weights}: sha256 {sha256_file(weights_dir() / weights)}")

    if args.skip_check:
        return 0
    if not verify(nets, paths, args.data.resolve(), args.tol):
        print(f"ERROR: onnxruntime output differs from torch by more than {args.tol}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
