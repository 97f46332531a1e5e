#!/usr/bin/env python3
"""Peer benchmark: the `face_recognition` package (dlib HOG + 5-point landmarks + dlib ResNet
descriptor), run the way its own video examples run it.

Per frame, as in face_recognition's `examples/facerec_from_video_file.py` and
`examples/facerec_from_webcam_faster.py`:

    frame  = capture.read()                                  # cv2.VideoCapture, BGR
    frame  = cv2.resize(frame, (0, 0), fx=s, fy=s)           # webcam example only (s = 0.25)
    rgb    = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    locs   = face_recognition.face_locations(rgb)            # HOG, upsample 1
    encs   = face_recognition.face_encodings(rgb, locs)      # 5-point landmarks, 1 jitter
    for each encoding:
        matches   = face_recognition.compare_faces(known, enc, tolerance)
        distances = face_recognition.face_distance(known, enc)
        name = known_names[argmin(distances)] if that one matches, else "Unknown"

The gallery is built as in the examples: `face_encodings(load_image_file(photo))[0]` per
`--known NAME=IMAGE`. The video-file example keeps frames at full resolution (`--scale 1`,
the default); the webcam example shrinks them to a quarter (`--scale 0.25`) and also skips
every other frame, which this benchmark does not do (every frame is processed).

Differences from the examples, all outside the timed work or neutral to it: nothing is drawn
or written, and BGR to RGB uses cv2.cvtColor (the examples' later form; the older
`frame[:, :, ::-1]` view is rejected by recent dlib builds).

Threads: dlib's HOG detector, shape predictor and (BLAS-less, as in dlib-bin) descriptor run
on one thread; --threads (default 1) caps OpenCV and any OpenMP/BLAS pool.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as common  # noqa: E402


def main():
    parser = common.base_parser(__doc__, default_threads=1)
    parser.add_argument("--upsample", type=int, default=1, metavar="N",
                        help="face_locations' number_of_times_to_upsample (default 1, the "
                             "library's and the examples' default)")
    args = parser.parse_args()
    common.check_args(parser, args)
    if not args.known:
        parser.error("give at least one --known NAME=IMAGE (the examples always compare)")
    common.pin_threads(args.threads)

    # Model loading happens at import: outside the timed loop.
    import face_recognition
    import numpy as np

    known_names, known_encodings = [], []
    for name, path in common.known_specs(args.known):
        encodings = face_recognition.face_encodings(face_recognition.load_image_file(path))
        if not encodings:
            sys.exit(f"no face found in gallery image {path}")
        known_names.append(name)
        known_encodings.append(encodings[0])

    def process(rgb):
        locations = face_recognition.face_locations(
            rgb, number_of_times_to_upsample=args.upsample, model="hog")
        encodings = face_recognition.face_encodings(rgb, locations)
        labels = []
        for encoding in encodings:
            matches = face_recognition.compare_faces(known_encodings, encoding, args.tolerance)
            distances = face_recognition.face_distance(known_encodings, encoding)
            best = int(np.argmin(distances))
            labels.append(known_names[best] if matches[best] else "Unknown")
        return labels

    from importlib.metadata import version
    settings = {
        "detector": "dlib HOG (face_recognition.face_locations, model='hog')",
        "upsample": args.upsample,
        "landmarks": "dlib 5-point",
        "descriptor": "dlib_face_recognition_resnet_model_v1, num_jitters=1",
        "example": ("facerec_from_video_file.py (full resolution)" if args.scale == 1.0
                    else "facerec_from_webcam_faster.py (downscaled; every frame processed)"),
        "face_recognition": version("face_recognition"),
        "dlib": __import__("dlib").__version__,
    }
    report = common.run_video(args, process, "face_recognition", settings)
    common.print_report(report, args.json)


if __name__ == "__main__":
    main()
