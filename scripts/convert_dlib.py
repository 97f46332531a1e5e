#!/usr/bin/env python3
"""Convert dlib's face descriptor ResNet (``dlib_face_recognition_resnet_model_v1.dat``)
into an ONNX model, without using dlib itself (only numpy + onnx).

The ``.dat`` file is dlib's DNN binary serialization of the network ``anet_type`` from
dlib's ``examples/dnn_face_recognition_ex.cpp``::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    alevel0 = ares_down<256>
    alevel1 = ares<256, ares<256, ares_down<256>>>
    alevel2 = ares<128, ares<128, ares_down<128>>>
    alevel3 = ares<64, ares<64, ares<64, ares_down<64>>>>
    alevel4 = ares<32, ares<32, ares<32>>>
    ares<N>      = relu<add_prev1<block<N,1, tag1<X>>>>
    ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,2, tag1<X>>>>>>>>
    block<N,s>   = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,s,s, X>>>>>>

Serialization format (dlib/serialize.h, dlib/dnn/{core,layers,input,loss,tensor}.h):

* integers: a control byte (bit 7 = negative, low 4 bits = number of bytes that
  follow), then the magnitude in little-endian bytes; zero is ``01 00``.
* float/double: ``float_details`` = mantissa (int64) then exponent (int16), both as
  integers above; value = mantissa * 2**exponent (exponents 32000/32001/32002 mean
  +inf/-inf/nan).
* bool: one ASCII byte ``'0'`` or ``'1'``.  std::string: size, then raw bytes.
* ``resizable_tensor``: int version (2), num_samples, k, nr, nc, then raw float32 LE.
  ``alias_tensor``: int version (1), num_samples, k, nr, nc (no data).
* ``add_loss_layer``: int version 1, loss details, subnet.
* ``add_layer``: int version 2, **subnet first**, then the layer details, 3 bools,
  x_grad, cached_output, params_grad tensors.  The bottom ``add_layer`` whose subnet is
  the input layer uses version 3: input layer, details, 3 bools, x_grad,
  cached_output, grad_final tensors, sample_expansion_factor (uint).
* ``add_tag_layer`` / ``add_skip_layer``: int version 1, subnet.  Neither the tag id
  nor the kind (tag vs. skip) is written, and ``add_prev_`` does not store its tag id
  either, so those identities come from the architecture above: the parsed layer
  sequence is matched one-to-one against it and every stored hyper-parameter (filters,
  kernel sizes, strides, paddings, pool windows, fc sizes) is asserted.

The converted graph:

* input ``input``: N x 3 x 150 x 150 float32, raw RGB 0..255 (channels first).
  dlib's ``input_rgb_image_sized`` normalisation ``(x - mean_rgb) / 256`` is the first
  op of the graph (means read from the file).
* every ``affine_`` (a frozen batch-norm: ``x * gamma + beta`` per channel) is folded
  into the ``con_`` below it.
* ``add_prev`` adds tensors of different shapes by treating the missing elements as
  zero (top-left aligned); the graph zero-pads (``Pad``) the smaller operand on the
  channel / height / width ends before the ``Add``.
* output ``descriptor``: N x 128, the raw dlib descriptor (not normalised).

Usage::

    scripts/.venv/bin/python scripts/convert_dlib.py [--dat PATH] [--out models/dlib_resnet_v1.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "models", "dlib_resnet_v1.onnx")
OPSET = 17
# IR version 8 is the one that goes with opset 17; it keeps the file loadable by
# runtimes that do not know newer IR versions.
IR_VERSION = 8


# --------------------------------------------------------------------------------------
# Low-level reader for dlib's serialization primitives
# --------------------------------------------------------------------------------------


class DlibFormatError(Exception):
    """The bytes do not follow dlib's serialization format as expected."""


class Reader:
    """Sequential reader over a dlib serialized byte string."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of file at offset {self.pos} (wanted {n} bytes)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int(self) -> int:
        """A (signed or unsigned) integer: control byte + little-endian magnitude."""
        start = self.pos
        ctrl = self._take(1)[0]
        if ctrl & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at offset {start}")
        size = ctrl & 0x0F
        if size > 8:
            raise DlibFormatError(f"integer of {size} bytes at offset {start}")
        value = int.from_bytes(self._take(size), "little", signed=False)
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        """A float/double stored as dlib ``float_details`` (mantissa, exponent)."""
        start = self.pos
        if self.data[self.pos] & 0x70:
            raise DlibFormatError(f"old ASCII float format at offset {start} is not supported")
        mantissa = self.int()
        exponent = self.int()
        if exponent == 32000:
            return float("inf")
        if exponent == 32001:
            return float("-inf")
        if exponent == 32002:
            return float("nan")
        return float(np.ldexp(np.float64(mantissa), exponent))

    def bool(self) -> bool:
        ch = self._take(1)
        if ch == b"1":
            return True
        if ch == b"0":
            return False
        raise DlibFormatError(f"bad bool byte {ch!r} at offset {self.pos - 1}")

    def string(self) -> str:
        n = self.int()
        return self._take(n).decode("latin-1")

    def peek_string(self, prefix: bytes) -> bool:
        """True when the next item is a std::string starting with ``prefix``."""
        save = self.pos
        try:
            n = self.int()
            return n >= len(prefix) and self.data[self.pos : self.pos + len(prefix)] == prefix
        except DlibFormatError:
            return False
        finally:
            self.pos = save

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor`` (version 2: raw little-endian float32 data), NCHW."""
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"resizable_tensor version {version} at offset {self.pos}")
        n, k, nr, nc = (self.int() for _ in range(4))
        count = n * k * nr * nc
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(n, k, nr, nc)

    def alias_tensor(self) -> Tuple[int, int, int, int]:
        """An ``alias_tensor`` (only its shape is stored)."""
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"alias_tensor version {version} at offset {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Layer parsing
# --------------------------------------------------------------------------------------


@dataclass
class Layer:
    """One parsed layer.  ``kind`` is the dlib details name (``con_4``, ``affine_`` ...),
    ``tag_or_skip`` for the (indistinguishable) tag/skip layers, or the input name."""

    kind: str
    params: Dict[str, Any] = field(default_factory=dict)
    offset: int = 0  # byte offset where the details start (for error messages)

    def describe(self) -> str:
        p = {k: v for k, v in self.params.items() if not isinstance(v, np.ndarray)}
        return f"{self.kind} {p}" if p else self.kind


def _parse_details(r: Reader) -> Layer:
    """Parse the ``details`` object of an ``add_layer``."""
    offset = r.pos
    name = r.string()
    p: Dict[str, Any] = {}
    if name == "con_4":
        params = r.tensor().reshape(-1)
        p["num_filters"] = r.int()
        p["nr"] = r.int()
        p["nc"] = r.int()
        p["stride_y"] = r.int()
        p["stride_x"] = r.int()
        p["padding_y"] = r.int()
        p["padding_x"] = r.int()
        filt_shape = r.alias_tensor()
        bias_shape = r.alias_tensor()
        for key in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            p[key] = r.float()
        nf = int(np.prod(filt_shape))
        nb = int(np.prod(bias_shape))
        if params.size != nf + nb:
            raise DlibFormatError(f"con_ params size {params.size} != {nf}+{nb} at {offset}")
        if filt_shape[0] != p["num_filters"] or filt_shape[2:] != (p["nr"], p["nc"]):
            raise DlibFormatError(f"con_ filter shape {filt_shape} inconsistent at {offset}")
        p["weight"] = params[:nf].reshape(filt_shape)  # (out, in, kh, kw)
        p["bias"] = params[nf : nf + nb].copy()
    elif name == "affine_":
        params = r.tensor().reshape(-1)
        gamma_shape = r.alias_tensor()
        beta_shape = r.alias_tensor()
        p["mode"] = r.int()  # 0 = CONV_MODE (per channel), 1 = FC_MODE (per element)
        ng = int(np.prod(gamma_shape))
        nb = int(np.prod(beta_shape))
        if params.size != ng + nb:
            raise DlibFormatError(f"affine_ params size {params.size} != {ng}+{nb} at {offset}")
        p["gamma"] = params[:ng].reshape(gamma_shape).copy()
        p["beta"] = params[ng : ng + nb].reshape(beta_shape).copy()
    elif name == "bn_con2":
        # A batch-norm layer deserializes into affine_ in dlib; convert the same way
        # (gamma / sqrt(running_var + eps), beta - gamma' * running_mean).
        params = r.tensor().reshape(-1)
        gamma_shape = r.alias_tensor()
        r.alias_tensor()  # beta
        r.tensor()  # means
        r.tensor()  # invstds
        running_means = r.tensor().reshape(-1)
        running_vars = r.tensor().reshape(-1)
        r.int()  # num_updates
        r.int()  # running_stats_window_size
        for _ in range(4):
            r.float()  # lr / wd multipliers
        eps = r.float()
        ng = int(np.prod(gamma_shape))
        g = params[:ng] / np.sqrt(running_vars + np.float32(eps))
        b = params[ng : 2 * ng] - g * running_means
        name = "affine_"
        p["mode"] = 0
        p["gamma"] = g.astype(np.float32).reshape(gamma_shape)
        p["beta"] = b.astype(np.float32).reshape(gamma_shape)
    elif name in ("relu_", "add_prev_"):
        pass
    elif name in ("max_pool_2", "avg_pool_2"):
        p["nr"] = r.int()
        p["nc"] = r.int()
        p["stride_y"] = r.int()
        p["stride_x"] = r.int()
        p["padding_y"] = r.int()
        p["padding_x"] = r.int()
    elif name == "fc_2":
        p["num_outputs"] = r.int()
        p["num_inputs"] = r.int()
        params = r.tensor().reshape(-1)
        w_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        p["bias_mode"] = r.int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        for key in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            p[key] = r.float()
        nw = int(np.prod(w_shape))
        if w_shape != (p["num_inputs"], p["num_outputs"], 1, 1):
            raise DlibFormatError(f"fc_ weight shape {w_shape} inconsistent at {offset}")
        # dlib computes output = input(N x num_inputs) * W(num_inputs x num_outputs).
        p["weight"] = params[:nw].reshape(p["num_inputs"], p["num_outputs"]).copy()
        if p["bias_mode"] == 0:
            nb = int(np.prod(b_shape))
            p["bias"] = params[nw : nw + nb].copy()
        elif params.size != nw:
            raise DlibFormatError(f"fc_no_bias params size {params.size} != {nw} at {offset}")
    else:
        raise DlibFormatError(f"unsupported layer type {name!r} at offset {offset}")
    return Layer(name, p, offset)


def _parse_input_layer(r: Reader) -> Layer:
    offset = r.pos
    name = r.string()
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"unsupported input layer {name!r} at offset {offset}")
    mean = (r.float(), r.float(), r.float())  # avg_red, avg_green, avg_blue
    nr = r.int()
    nc = r.int()
    return Layer(name, {"mean_rgb": mean, "nr": nr, "nc": nc}, offset)


def parse_dat(data: bytes) -> Tuple[Layer, List[Layer]]:
    """Parse the whole file.  Returns the loss layer and the list of layers below it,
    top (next to the loss) to bottom (the input layer)."""
    r = Reader(data)
    version = r.int()
    if version != 1:
        raise DlibFormatError(f"add_loss_layer version {version}")
    loss_name = r.string()
    if loss_name == "loss_metric_2":
        loss = Layer(loss_name, {"margin": r.float(), "dist_thresh": r.float()})
    elif loss_name == "loss_metric_":
        loss = Layer(loss_name)
    else:
        raise DlibFormatError(f"unsupported loss layer {loss_name!r}")

    # Because every add_layer writes its subnet *before* its own details, the file is a
    # prefix of version numbers going down the stack, then the input layer, then the
    # details of each layer coming back up.  Walk down first, then back up.
    pending: List[str] = []  # top-down: "add_layer" or "tag_or_skip"
    while True:
        version = r.int()
        if version == 1:
            pending.append("tag_or_skip")  # add_tag_layer / add_skip_layer
        elif version in (2, 3) and r.peek_string(b"input_"):
            bottom_version = version
            break
        elif version == 2:
            pending.append("add_layer")
        else:
            raise DlibFormatError(f"unexpected layer version {version} at offset {r.pos}")

    # Bottom add_layer (its subnet is the input layer).
    input_layer = _parse_input_layer(r)
    bottom = _parse_details(r)
    for _ in range(3):
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    r.tensor()  # grad_final
    if bottom_version == 3:
        r.int()  # sample_expansion_factor

    layers_bottom_up: List[Layer] = [input_layer, bottom]
    for kind in reversed(pending):
        if kind == "tag_or_skip":
            layers_bottom_up.append(Layer("tag_or_skip"))
            continue
        details = _parse_details(r)
        for _ in range(3):
            r.bool()  # this_layer_setup_called, gradient_input_is_stale, output disabled
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        r.tensor()  # params_grad
        layers_bottom_up.append(details)

    if not r.at_end():
        raise DlibFormatError(f"parse ended at offset {r.pos} but the file has {len(data)} bytes")
    return loss, list(reversed(layers_bottom_up))


# --------------------------------------------------------------------------------------
# Architecture (dlib's anet_type), used to name tag/skip layers and check parameters
# --------------------------------------------------------------------------------------


def _expected_architecture() -> List[Tuple[str, Dict[str, Any]]]:
    """The expected layer sequence, top-down, as (kind, expected params).  Tag/skip
    layers carry their dlib identity (``tag1``, ``tag2``, ``skip1``) and ``add_prev_``
    its tag id, which the file itself does not store."""

    def con(n: int, k: int, s: int) -> Tuple[str, Dict[str, Any]]:
        pad = k // 2 if s == 1 else 0  # dlib's con_ default template padding
        return ("con_4", dict(num_filters=n, nr=k, nc=k, stride_y=s, stride_x=s,
                              padding_y=pad, padding_x=pad))

    def block(n: int, s: int) -> List[Tuple[str, Dict[str, Any]]]:
        return [("affine_", {}), con(n, 3, 1), ("relu_", {}), ("affine_", {}), con(n, 3, s)]

    def ares(n: int) -> List[Tuple[str, Dict[str, Any]]]:
        return [("relu_", {}), ("add_prev_", {"tag": 1})] + block(n, 1) + [("tag1", {})]

    def ares_down(n: int) -> List[Tuple[str, Dict[str, Any]]]:
        pool = ("avg_pool_2", dict(nr=2, nc=2, stride_y=2, stride_x=2, padding_y=0, padding_x=0))
        return ([("relu_", {}), ("add_prev_", {"tag": 2}), pool, ("skip1", {}), ("tag2", {})]
                + block(n, 2) + [("tag1", {})])

    seq: List[Tuple[str, Dict[str, Any]]] = []
    seq.append(("fc_2", dict(num_outputs=128, bias_mode=1)))
    seq.append(("avg_pool_2", dict(nr=0, nc=0, stride_y=1, stride_x=1, padding_y=0, padding_x=0)))
    seq += ares_down(256)                                       # alevel0
    seq += ares(256) + ares(256) + ares_down(256)               # alevel1
    seq += ares(128) + ares(128) + ares_down(128)               # alevel2
    seq += ares(64) + ares(64) + ares(64) + ares_down(64)       # alevel3
    seq += ares(32) + ares(32) + ares(32)                       # alevel4
    # max_pool<3,3,2,2>: dlib's default padding is 0 when the stride is not 1.
    seq.append(("max_pool_2", dict(nr=3, nc=3, stride_y=2, stride_x=2, padding_y=0, padding_x=0)))
    seq += [("relu_", {}), ("affine_", {}), con(32, 7, 2)]
    seq.append(("input_rgb_image_sized", dict(nr=150, nc=150)))
    return seq


def annotate(layers: List[Layer]) -> List[Layer]:
    """Match the parsed layers against the expected architecture; give tag/skip layers
    and add_prev layers their identities.  Raises if anything does not match."""
    expected = _expected_architecture()
    if len(expected) != len(layers):
        raise DlibFormatError(f"parsed {len(layers)} layers, expected {len(expected)}")
    out: List[Layer] = []
    for i, (layer, (kind, want)) in enumerate(zip(layers, expected)):
        if kind in ("tag1", "tag2", "skip1"):
            if layer.kind != "tag_or_skip":
                raise DlibFormatError(f"layer {i}: expected {kind}, found {layer.describe()}")
            out.append(Layer(kind, {}, layer.offset))
            continue
        if layer.kind != kind:
            raise DlibFormatError(f"layer {i}: expected {kind}, found {layer.describe()}")
        for key, value in want.items():
            if key == "tag":
                continue
            if layer.params.get(key) != value:
                raise DlibFormatError(
                    f"layer {i} ({kind}): {key}={layer.params.get(key)!r}, expected {value!r}")
        params = dict(layer.params)
        if "tag" in want:
            params["tag"] = want["tag"]
        out.append(Layer(kind, params, layer.offset))
    return out


# --------------------------------------------------------------------------------------
# ONNX graph construction
# --------------------------------------------------------------------------------------


class GraphBuilder:
    """Builds the ONNX graph bottom-up following dlib's forward semantics."""

    def __init__(self) -> None:
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.counter = 0

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, n))
        return n

    def node(self, op: str, inputs: List[str], prefix: str, out: Optional[str] = None, **attrs) -> str:
        out = out or self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{out}", **attrs))
        return out


def _conv_out(size: int, k: int, s: int, pad: int) -> int:
    return 1 + (size + 2 * pad - k) // s


def build_onnx(layers: List[Layer], loss: Layer, meta: Dict[str, str]) -> onnx.ModelProto:
    """Build the ONNX model from the annotated top-down layer list."""
    g = GraphBuilder()
    bottom_up = list(reversed(layers))

    # Each entry: (tensor name, static shape (C, H, W) or (F,), kind)
    outputs: List[Tuple[str, Tuple[int, ...], str]] = []

    def find_tag(start: int, tag_kind: str) -> Tuple[str, Tuple[int, ...]]:
        """Output of the first ``tag_kind`` layer at or below bottom-up index ``start``
        (dlib's ``layer<tag>(sub)`` search)."""
        for j in range(start, -1, -1):
            if outputs[j][2] == tag_kind:
                return outputs[j][0], outputs[j][1]
        raise DlibFormatError(f"no {tag_kind} below layer {start}")

    i = 0
    while i < len(bottom_up):
        layer = bottom_up[i]
        kind = layer.kind
        p = layer.params
        if kind == "input_rgb_image_sized":
            mean = np.array(p["mean_rgb"], dtype=np.float32).reshape(1, 3, 1, 1)
            centered = g.node("Sub", ["input", g.const("input_mean_rgb", mean)], "centered")
            scale = np.array(1.0 / 256.0, dtype=np.float32)
            x = g.node("Mul", [centered, g.const("input_scale", scale)], "normalized")
            outputs.append((x, (3, p["nr"], p["nc"]), kind))
        elif kind == "con_4":
            w = p["weight"].astype(np.float64)
            b = p["bias"].astype(np.float64)
            # Fold an affine_ directly above this conv (nothing can observe the conv
            # output in between: a tag would be a separate layer).
            folded = i + 1 < len(bottom_up) and bottom_up[i + 1].kind == "affine_"
            if folded:
                aff = bottom_up[i + 1].params
                if aff["mode"] != 0:
                    raise DlibFormatError("affine_ in FC_MODE above a con_ is not supported")
                gamma = aff["gamma"].reshape(-1).astype(np.float64)
                beta = aff["beta"].reshape(-1).astype(np.float64)
                w = w * gamma[:, None, None, None]
                b = b * gamma + beta
            src, shape = outputs[-1][0], outputs[-1][1]
            if w.shape[1] != shape[0]:
                raise DlibFormatError(f"con_ expects {w.shape[1]} channels, input has {shape[0]}")
            py, px = p["padding_y"], p["padding_x"]
            y = g.node(
                "Conv",
                [src, g.const("conv_w", w.astype(np.float32)), g.const("conv_b", b.astype(np.float32))],
                "conv",
                kernel_shape=[p["nr"], p["nc"]],
                strides=[p["stride_y"], p["stride_x"]],
                pads=[py, px, py, px],
            )
            out_shape = (p["num_filters"],
                         _conv_out(shape[1], p["nr"], p["stride_y"], py),
                         _conv_out(shape[2], p["nc"], p["stride_x"], px))
            outputs.append((y, out_shape, kind))
            if folded:
                outputs.append((y, out_shape, "affine_"))
                i += 1
        elif kind == "affine_":
            # Not above a conv (does not happen in this network): per-channel Mul + Add.
            src, shape = outputs[-1][0], outputs[-1][1]
            if p["mode"] != 0:
                raise DlibFormatError("affine_ in FC_MODE is not supported")
            gamma = p["gamma"].reshape(1, -1, 1, 1).astype(np.float32)
            beta = p["beta"].reshape(1, -1, 1, 1).astype(np.float32)
            y = g.node("Mul", [src, g.const("affine_gamma", gamma)], "affine_mul")
            y = g.node("Add", [y, g.const("affine_beta", beta)], "affine")
            outputs.append((y, shape, kind))
        elif kind == "relu_":
            src, shape = outputs[-1][0], outputs[-1][1]
            outputs.append((g.node("Relu", [src], "relu"), shape, kind))
        elif kind in ("max_pool_2", "avg_pool_2"):
            src, shape = outputs[-1][0], outputs[-1][1]
            if p["nr"] == 0 and p["nc"] == 0:
                if kind != "avg_pool_2":
                    raise DlibFormatError("global max pooling is not supported")
                # avg_pool_everything: window = whole map, stride 1, no padding.
                y = g.node("GlobalAveragePool", [src], "global_avg_pool")
                outputs.append((y, (shape[0], 1, 1), kind))
            else:
                py, px = p["padding_y"], p["padding_x"]
                attrs = dict(kernel_shape=[p["nr"], p["nc"]],
                             strides=[p["stride_y"], p["stride_x"]],
                             pads=[py, px, py, px])
                if kind == "avg_pool_2":
                    # dlib averages over the in-bounds elements only.
                    attrs["count_include_pad"] = 0
                    y = g.node("AveragePool", [src], "avg_pool", **attrs)
                else:
                    y = g.node("MaxPool", [src], "max_pool", **attrs)
                out_shape = (shape[0],
                             _conv_out(shape[1], p["nr"], p["stride_y"], py),
                             _conv_out(shape[2], p["nc"], p["stride_x"], px))
                outputs.append((y, out_shape, kind))
        elif kind in ("tag1", "tag2"):
            outputs.append((outputs[-1][0], outputs[-1][1], kind))
        elif kind == "skip1":
            src, shape = find_tag(i - 1, "tag1")
            outputs.append((src, shape, kind))
        elif kind == "add_prev_":
            t1, s1 = outputs[-1][0], outputs[-1][1]
            t2, s2 = find_tag(i - 1, f"tag{p['tag']}")
            target = tuple(max(a, b) for a, b in zip(s1, s2))

            def pad_to(t: str, s: Tuple[int, ...]) -> str:
                if s == target:
                    return t
                # dlib's tt::add reads missing elements (beyond the end of any dim) as 0.
                # ONNX pads: [begin N, C, H, W, end N, C, H, W].
                pads = [0, 0, 0, 0, 0, target[0] - s[0], target[1] - s[1], target[2] - s[2]]
                return g.node("Pad", [t, g.const("pads", np.array(pads, dtype=np.int64))],
                              "zero_pad", mode="constant")

            y = g.node("Add", [pad_to(t1, s1), pad_to(t2, s2)], "add_prev")
            outputs.append((y, target, kind))
        elif kind == "fc_2":
            src, shape = outputs[-1][0], outputs[-1][1]
            n_in = int(np.prod(shape))
            if n_in != p["num_inputs"]:
                raise DlibFormatError(f"fc_ expects {p['num_inputs']} inputs, got {n_in}")
            flat = g.node("Flatten", [src], "flatten", axis=1)
            w = g.const("fc_w", p["weight"].astype(np.float32))
            is_top = i == len(bottom_up) - 1
            out_name = "descriptor" if (is_top and p["bias_mode"] == 1) else None
            y = g.node("MatMul", [flat, w], "fc", out=out_name)
            if p["bias_mode"] == 0:
                out_name = "descriptor" if is_top else None
                y = g.node("Add", [y, g.const("fc_b", p["bias"].astype(np.float32))], "fc_bias", out=out_name)
            outputs.append((y, (p["num_outputs"],), kind))
        else:
            raise DlibFormatError(f"no ONNX mapping for layer {kind}")
        i += 1

    final_name, final_shape, _ = outputs[-1]
    if final_name != "descriptor":
        raise DlibFormatError("the top layer must be the fc_ layer")

    in_shape = outputs[0][1]
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["N", *final_shape])],
        initializer=g.inits,
    )
    graph.doc_string = (
        "input: N x 3 x 150 x 150 float32 RGB in 0..255, channels first (an aligned face "
        "chip as produced by dlib.get_face_chip(img, shape, size=150, padding=0.25)); "
        "output: N x 128 raw dlib face descriptor (not L2-normalised)."
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="carivis scripts/convert_dlib.py",
        producer_version="1",
        doc_string=(
            "dlib face recognition ResNet (dlib_face_recognition_resnet_model_v1) converted "
            f"from {meta['source_package']} {meta['source_package_version']} "
            f"({meta['source_file']}, sha256 {meta['source_sha256']}). "
            "Input normalisation (x - mean_rgb) / 256 is part of the graph; loss_metric "
            f"margin={loss.params.get('margin')}, dist_thresh={loss.params.get('dist_thresh')} "
            "(two descriptors of the same person are closer than dist_thresh in euclidean distance)."
        ),
    )
    model.ir_version = IR_VERSION
    mean = bottom_up[0].params["mean_rgb"]
    props = dict(meta)
    props.update({
        "input_mean_rgb": ",".join(repr(float(np.float32(m))) for m in mean),
        "input_scale": "1/256",
        "loss_metric_margin": repr(loss.params.get("margin")),
        "loss_metric_dist_thresh": repr(loss.params.get("dist_thresh")),
        "chip_size": "150",
        "chip_padding": "0.25",
    })
    helper.set_model_props(model, props)
    return model


# --------------------------------------------------------------------------------------


def default_dat_path() -> str:
    import face_recognition_models  # only used to locate the file

    return face_recognition_models.face_recognition_model_location()


def source_package_version() -> str:
    try:
        from importlib.metadata import version

        return version("face_recognition_models")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert dlib_face_recognition_resnet_model_v1.dat to ONNX (numpy + onnx only).")
    ap.add_argument("--dat", help="path to dlib_face_recognition_resnet_model_v1.dat "
                    "(default: the one shipped by the face_recognition_models package)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output ONNX path (default: %(default)s)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the parsed layer list")
    args = ap.parse_args(argv)

    dat_path = args.dat or default_dat_path()
    with open(dat_path, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    print(f"read {dat_path} ({len(data)} bytes, sha256 {sha})")

    loss, layers = parse_dat(data)
    print(f"parsed {loss.describe()} + {len(layers)} layers; parse ended exactly at end of file")
    layers = annotate(layers)
    if args.verbose:
        for i, layer in enumerate(layers):
            print(f"  layer<{i + 1}> {layer.describe()}")

    meta = {
        "source_package": "face_recognition_models",
        "source_package_version": source_package_version(),
        "source_file": os.path.basename(dat_path),
        "source_sha256": sha,
        "source_format": "dlib DNN serialization (anet_type of dnn_face_recognition_ex.cpp)",
        "converter": "scripts/convert_dlib.py",
    }
    model = build_onnx(layers, loss, meta)
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    onnx.save(model, args.out)
    with open(args.out, "rb") as f:
        out_sha = hashlib.sha256(f.read()).hexdigest()
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, sha256 {out_sha}, "
          f"{len(model.graph.node)} nodes, {n_params} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
