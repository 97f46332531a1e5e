#!/usr/bin/env python3
"""Peer benchmark: facenet-pytorch's MTCNN for detection, then dlib's 5-point shape predictor
and ResNet face descriptor on each MTCNN box.

This is the reference for carivis's own design (MTCNN + the dlib descriptor) built from the
two upstream libraries in their plainest form. Per frame:

    frame  = capture.read()                                   # cv2.VideoCapture, BGR
    frame  = cv2.resize(frame, (0, 0), fx=s, fy=s)            # only with --scale != 1
    rgb    = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    boxes, _ = mtcnn.detect(Image.fromarray(rgb))             # MTCNN(keep_all=True), defaults
    for each box:
        shape = sp(rgb, dlib.rectangle(*box))                 # shape_predictor_5_face_landmarks
        enc   = encoder.compute_face_descriptor(rgb, shape, 1)
        label = nearest known descriptor if its distance <= tolerance, else "Unknown"

The detection half follows facenet-pytorch's own video example (`examples/face_tracking.ipynb`:
`MTCNN(keep_all=True, device=device)`, frames converted BGR to RGB and wrapped in a PIL
image, `boxes, _ = mtcnn.detect(frame)`), with every other MTCNN setting at its default
(min_face_size 20, thresholds 0.6/0.7/0.7, factor 0.709). The descriptor half is dlib's
own recipe, exactly what face_recognition.face_encodings does after its detector: the 5-point
predictor on the box, then `compute_face_descriptor` (which aligns a 150x150 chip from those
five points). MTCNN's own five landmarks (eye centres, nose tip, mouth corners) are not used:
the dlib descriptor is trained on chips aligned from dlib's five points (eye corners, nose
base). Matching is face_recognition's: Euclidean distance, best match within --tolerance.

The gallery (`--known NAME=IMAGE`) goes through the same pipeline; the largest face of each
photo is kept.

Threads: --threads (default 2) goes to torch.set_num_threads for MTCNN (inter-op threads: 1)
and caps OpenCV and OpenMP/BLAS pools; dlib (dlib-bin has no BLAS) runs on one thread.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as common  # noqa: E402


def main():
    parser = common.base_parser(__doc__, default_threads=2)
    args = parser.parse_args()
    common.check_args(parser, args)
    if not args.known:
        parser.error("give at least one --known NAME=IMAGE")
    common.pin_threads(args.threads)

    import dlib
    import face_recognition_models
    import numpy as np
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    mtcnn = MTCNN(keep_all=True, device="cpu")
    predictor = dlib.shape_predictor(
        face_recognition_models.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(
        face_recognition_models.face_recognition_model_location())

    def encode(rgb):
        """Descriptors of the faces in an RGB image, largest face first."""
        boxes, _ = mtcnn.detect(Image.fromarray(rgb))
        if boxes is None:
            return []
        encodings = []
        for left, top, right, bottom in boxes:
            rect = dlib.rectangle(int(round(left)), int(round(top)),
                                  int(round(right)), int(round(bottom)))
            shape = predictor(rgb, rect)
            encodings.append(np.array(encoder.compute_face_descriptor(rgb, shape, 1)))
        return encodings

    known_names, known_encodings = [], []
    for name, path in common.known_specs(args.known):
        encodings = encode(np.asarray(Image.open(path).convert("RGB")))
        if not encodings:
            sys.exit(f"no face found in gallery image {path}")
        known_names.append(name)
        known_encodings.append(encodings[0])
    known_encodings = np.array(known_encodings)

    def process(rgb):
        labels = []
        for encoding in encode(rgb):
            distances = np.linalg.norm(known_encodings - encoding, axis=1)
            best = int(np.argmin(distances))
            labels.append(known_names[best] if distances[best] <= args.tolerance else "Unknown")
        return labels

    from importlib.metadata import version
    settings = {
        "detector": "facenet-pytorch MTCNN (keep_all=True, defaults), torch CPU",
        "landmarks": "dlib 5-point on the MTCNN box",
        "descriptor": "dlib_face_recognition_resnet_model_v1, num_jitters=1",
        "torch_threads": torch.get_num_threads(),
        "facenet_pytorch": version("facenet-pytorch"),
        "torch": torch.__version__,
        "dlib": dlib.__version__,
    }
    report = common.run_video(args, process, "facenet-pytorch+dlib", settings)
    common.print_report(report, args.json)


if __name__ == "__main__":
    main()
