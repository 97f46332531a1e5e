"""Shared parts of the peer benchmark scripts: options, thread pinning, the timed video loop
and the report.

Each peer script (`face_recognition_video.py`, `facenet_dlib_video.py`) supplies only what
its reference pipeline does per frame and how it encodes a gallery photo; everything that
decides what is measured lives here, so both peers are measured the same way:

- the clock starts after models are loaded and the gallery is encoded, with the video
  already open, and stops after the last frame's faces are labelled;
- the timed work per frame is: read and decode (cv2.VideoCapture), optional resize, BGR to
  RGB, detect, landmark, embed, compare with the known faces;
- nothing is drawn or written.

This module imports only the standard library at load time, so that the thread variables
can be set before numpy, OpenCV, torch or dlib are imported.
"""
import argparse
import json
import os
import sys
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def base_parser(description, default_threads):
    """The options every peer script takes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="video file to read with cv2.VideoCapture")
    parser.add_argument("--known", action="append", default=[], metavar="NAME=IMAGE",
                        help="a gallery photo of a known person (repeatable; several photos "
                             "may share a NAME)")
    parser.add_argument("--expect", metavar="NAME",
                        help="the person the video shows: report the fraction of frames where "
                             "some face is labelled NAME")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="stop after N frames (default: the whole video)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="resize every frame by this factor before detection (default "
                             "1.0, as the peer's video-file example; its webcam example uses "
                             "0.25)")
    parser.add_argument("--tolerance", type=float, default=0.6,
                        help="largest descriptor distance that counts as a match (default "
                             "0.6, face_recognition's default)")
    parser.add_argument("--threads", type=int, default=default_threads, metavar="N",
                        help=f"CPU threads for the libraries that let one choose "
                             f"(default {default_threads})")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def check_args(parser, args):
    """Rejects option values the loop cannot use."""
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be at least 1")
    if not args.scale > 0:
        parser.error("--scale must be positive")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if not os.path.isfile(args.video):
        parser.error(f"no such video: {args.video}")
    for spec in args.known:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--known expects NAME=IMAGE, got {spec!r}")
        if not os.path.isfile(path):
            parser.error(f"no such gallery image: {path}")
    if args.expect and args.expect not in known_names(args.known):
        parser.error(f"--expect {args.expect!r} is none of the --known names")


def known_names(specs):
    """The distinct NAMEs of NAME=IMAGE specs, in order."""
    return list(dict.fromkeys(spec.partition("=")[0] for spec in specs))


def known_specs(specs):
    """NAME=IMAGE specs as (name, path) pairs."""
    return [tuple(spec.split("=", 1)) for spec in specs]


def pin_threads(threads):
    """Caps OpenMP/BLAS thread pools. Call before numpy, cv2, torch or dlib are imported."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def run_video(args, process, tool, settings):
    """Runs `process(rgb) -> list of labels` over the video's frames and returns the report.

    `process` receives the (resized) frame already converted to RGB, as the peers' examples
    do, and returns one label per face found ("Unknown" for no match).
    """
    import cv2

    # Resize and colour conversion; the decoder keeps OpenCV's default, as carivis does.
    cv2.setNumThreads(args.threads)
    capture = cv2.VideoCapture(args.video)
    if not capture.isOpened():
        sys.exit(f"cannot open {args.video} with OpenCV")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))

    load_average = os.getloadavg()[0]
    frames = faces = with_face = labelled = 0
    started = time.perf_counter()
    while args.frames is None or frames < args.frames:
        ok, frame = capture.read()
        if not ok:
            break
        if args.scale != 1.0:
            frame = cv2.resize(frame, (0, 0), fx=args.scale, fy=args.scale)
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        labels = process(rgb)
        frames += 1
        faces += len(labels)
        with_face += bool(labels)
        labelled += args.expect is not None and args.expect in labels
        if not args.quiet and frames % 25 == 0:
            elapsed = time.perf_counter() - started
            print(f"{tool}: {frames} frames, {frames / elapsed:.2f} fps", file=sys.stderr)
    seconds = time.perf_counter() - started
    capture.release()

    if frames == 0:
        sys.exit(f"{args.video}: no frame could be read")
    return {
        "tool": tool,
        "video": args.video,
        "resolution": [width, height],
        "scale": args.scale,
        "processed_resolution": [round(width * args.scale), round(height * args.scale)],
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "faces_per_frame": faces / frames,
        "frames_with_face": with_face / frames,
        "expect": args.expect,
        "labelled_fraction": labelled / frames if args.expect else None,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": load_average,
        "tolerance": args.tolerance,
        "known": known_names(args.known),
        "settings": settings,
    }


def print_report(report, as_json):
    """The report as JSON on stdout, or as a few readable lines."""
    if as_json:
        print(json.dumps(report))
        return
    w, h = report["resolution"]
    pw, ph = report["processed_resolution"]
    mode = ("full resolution, as the video-file example" if report["scale"] == 1.0
            else f"scale {report['scale']:g} ({pw}x{ph}), as the webcam example"
            if report["scale"] == 0.25 else f"scale {report['scale']:g} ({pw}x{ph})")
    print(f"tool:            {report['tool']}")
    print(f"video:           {report['video']} ({w}x{h}; {mode})")
    print(f"threads:         {report['threads']}")
    print(f"frames:          {report['frames']}")
    print(f"seconds:         {report['seconds']:.2f}")
    print(f"fps:             {report['fps']:.2f}")
    print(f"faces per frame: {report['faces_per_frame']:.2f} (frames with a face: "
          f"{100 * report['frames_with_face']:.1f}%)")
    if report["expect"]:
        print(f"labelled:        {100 * report['labelled_fraction']:.1f}% of frames have a face "
              f"labelled {report['expect']!r}")
