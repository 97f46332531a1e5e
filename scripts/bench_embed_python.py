"""Embedding throughput of an ONNX model through ONNX Runtime's Python API.

The reference side of `cargo bench --bench embed`: the same model, the same chips (150x150 RGB
PNGs), the same thread settings, and the same work per batch as carivis (uint8 HWC chips to a
float32 NCHW batch, one run, unit-normalised rows). Prints one JSON line per batch size.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="ONNX embedding model")
    parser.add_argument("--chips", nargs="+", required=True, help="150x150 RGB chip images")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--faces", type=int, default=256, help="faces embedded per batch size")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    chips = [np.asarray(Image.open(p).convert("RGB")) for p in args.chips]

    for batch in [int(b) for b in args.batches.split(",")]:
        stack = [chips[i % len(chips)] for i in range(batch)]
        run_batch(session, stack)  # warm-up
        started = time.perf_counter()
        done = 0
        while done < args.faces:
            run_batch(session, stack)
            done += batch
        elapsed = time.perf_counter() - started
        print(json.dumps({"runtime": "python", "ort": ort.__version__, "batch": batch,
                          "faces_per_s": done / elapsed}))


def run_batch(session, chips):
    tensor = np.stack(chips).astype(np.float32).transpose(0, 3, 1, 2).copy()
    out = session.run(None, {"input": tensor})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


if __name__ == "__main__":
    main()
