#!/usr/bin/env python3
"""Convert dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)
to ONNX.

  python convert_dlib_to_onnx.py --dat dlib_face_recognition_resnet_model_v1.dat \
                                 --out dlib_face_recognition_resnet_v1.onnx

Steps: (1) parse dlib's binary DNN serialization (only the layer types this network
uses), (2) check the parsed layer sequence against the anet_type definition from
dlib/examples/dnn_face_recognition_ex.cpp, (3) build the ONNX graph directly with
onnx.helper (no torch needed), (4) self-check: run onnxruntime against an
independent float64 numpy implementation of the dlib network.

ONNX model:  input  "images"      uint8  [N,150,150,3]  (RGB, NHWC, aligned chips as
                                                         produced by dlib.get_face_chip(img, shape, 150, 0.25))
             output "embeddings" float32 [N,128]       (raw, NOT L2-normalised; same as
                                                         dlib's compute_face_descriptor)
Dependencies: numpy, onnx, (onnxruntime for the self-check).
"""
import argparse
import math
import sys

import numpy as np


# ----------------------------------------------------------------------------------------
# dlib serialization primitives (dlib/serialize.h, dlib/dnn/tensor.h)
# ----------------------------------------------------------------------------------------
class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def byte(self):
        b = self.d[self.p]
        self.p += 1
        return b

    def int(self):
        # control byte: low nibble = number of bytes, 0x80 = negative; then little endian
        ctrl = self.byte()
        n = ctrl & 0x0F
        if n > 8:
            raise ValueError("bad integer control byte 0x%02x at %d" % (ctrl, self.p - 1))
        v = int.from_bytes(self.d[self.p:self.p + n], "little") if n else 0
        self.p += n
        return -v if ctrl & 0x80 else v

    def float(self):
        # dlib serializes float/double as (int64 mantissa, int16 exponent)
        m = self.int()
        e = self.int()
        if e == 32000:
            return math.inf
        if e == 32001:
            return -math.inf
        if e == 32002:
            return math.nan
        return math.ldexp(m, e)

    def string(self):
        n = self.int()
        s = self.d[self.p:self.p + n].decode("latin1")
        self.p += n
        return s

    def bool(self):
        c = self.byte()
        if c not in (ord("0"), ord("1")):
            raise ValueError("bad bool byte 0x%02x at %d" % (c, self.p - 1))
        return c == ord("1")

    def tensor(self):
        ver = self.int()
        ns, k, nr, nc = self.int(), self.int(), self.int(), self.int()
        n = ns * k * nr * nc
        if ver == 2:   # raw little endian float32
            a = np.frombuffer(self.d, dtype="<f4", count=n, offset=self.p).copy()
            self.p += 4 * n
        elif ver == 1:  # dlib float serialization, one by one
            a = np.array([self.float() for _ in range(n)], dtype=np.float32)
        else:
            raise ValueError("unknown tensor version %d" % ver)
        return a.reshape(ns, k, nr, nc)

    def alias_tensor(self):
        ver = self.int()
        if ver != 1:
            raise ValueError("unknown alias_tensor version %d" % ver)
        return tuple(self.int() for _ in range(4))


def parse_details(r):
    """Parse one layer's 'details' object.  Returns a dict."""
    v = r.string()
    if v in ("con_4", "con_5", "con_6"):
        params = r.tensor().reshape(-1)
        L = dict(type="con", num_filters=r.int(), nr=r.int(), nc=r.int(),
                 stride_y=r.int(), stride_x=r.int(), pad_y=r.int(), pad_x=r.int())
        filt = r.alias_tensor()
        bias = r.alias_tensor()
        for _ in range(4):       # lr / wd multipliers
            r.float()
        if v in ("con_5", "con_6"):
            L["use_bias"] = r.bool()
        if v == "con_6":
            L["use_relu"] = r.bool()
        nf = int(np.prod(filt))
        L["W"] = params[:nf].reshape(filt)                     # [O, I, kh, kw]  (cross-correlation, like ONNX)
        L["b"] = params[nf:nf + int(np.prod(bias))].reshape(-1) if np.prod(bias) else np.zeros(L["num_filters"], np.float32)
        return L
    if v == "affine_":
        params = r.tensor().reshape(-1)
        g = r.alias_tensor()
        b = r.alias_tensor()
        mode = r.int()
        ng = int(np.prod(g))
        if mode != 0:
            raise ValueError("only CONV_MODE affine layers are supported")
        return dict(type="affine", gamma=params[:ng], beta=params[ng:ng + int(np.prod(b))], mode=mode)
    if v == "relu_":
        return dict(type="relu")
    if v in ("max_pool_2", "avg_pool_2"):
        L = dict(type=v[:-2], nr=r.int(), nc=r.int(), stride_y=r.int(), stride_x=r.int(),
                 pad_y=r.int(), pad_x=r.int())
        return L
    if v == "add_prev_":
        return dict(type="add_prev")
    if v == "fc_2":
        num_out, num_in = r.int(), r.int()
        params = r.tensor().reshape(-1)
        w = r.alias_tensor()
        b = r.alias_tensor()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        nw = int(np.prod(w))
        L = dict(type="fc", num_outputs=num_out, num_inputs=num_in,
                 W=params[:nw].reshape(num_in, num_out), bias_mode=bias_mode)   # y = x @ W
        L["b"] = params[nw:nw + num_out] if bias_mode == 0 else None
        return L
    raise ValueError("unsupported dlib layer version string %r at byte %d" % (v, r.p))


def parse_input(r):
    v = r.string()
    if v not in ("input_rgb_image_sized", "input_rgb_image"):
        raise ValueError("unsupported input layer %r" % v)
    L = dict(type="input", avg=(r.float(), r.float(), r.float()))
    if v == "input_rgb_image_sized":
        L["nr"], L["nc"] = r.int(), r.int()
    return L


def parse_subnet(r, out):
    """Recursive add_layer / add_tag_layer / add_skip_layer parser.
    Appends layers to `out` in forward order (input first)."""
    ver = r.int()
    if ver == 1:
        # add_tag_layer<ID> or add_skip_layer<TAG>: version 1 followed only by the
        # subnetwork.  The ID is a template parameter and is NOT serialized.
        parse_subnet(r, out)
        out.append(dict(type="tag_or_skip"))
    elif ver == 2:
        parse_subnet(r, out)
        L = parse_details(r)
        r.bool(); r.bool(); r.bool()
        r.tensor(); r.tensor(); r.tensor()         # x_grad, cached_output, params_grad
        out.append(L)
    elif ver == 3:
        # add_layer whose subnetwork is the input layer
        out.append(parse_input(r))
        L = parse_details(r)
        r.bool(); r.bool(); r.bool()
        r.tensor(); r.tensor(); r.tensor()         # x_grad, cached_output, grad_final
        r.int()                                    # _sample_expansion_factor
        out.append(L)
    else:
        raise ValueError("unexpected layer wrapper version %d at byte %d" % (ver, r.p))


def parse_dat(path):
    data = open(path, "rb").read()
    r = Reader(data)
    sys.setrecursionlimit(10000)
    ver = r.int()
    if ver != 1:
        raise ValueError("unexpected add_loss_layer version %d" % ver)
    loss = r.string()
    if loss != "loss_metric_2":
        raise ValueError("unexpected loss %r" % loss)
    margin, dist_thresh = r.float(), r.float()
    layers = []
    parse_subnet(r, layers)
    if r.p != len(data):
        raise ValueError("trailing bytes: parsed %d of %d" % (r.p, len(data)))
    return dict(loss=loss, margin=margin, dist_thresh=dist_thresh), layers


# ----------------------------------------------------------------------------------------
# Expected architecture (dnn_face_recognition_ex.cpp, anet_type), forward order
# ----------------------------------------------------------------------------------------
def expected_arch():
    seq = [("input",), ("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]

    def ares(n):
        return [("tag", 1), ("con", n, 3, 1), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",),
                ("add_prev", 1), ("relu",)]

    def ares_down(n):
        return [("tag", 1), ("con", n, 3, 2), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",),
                ("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2), ("relu",)]

    seq += ares(32) * 3                                   # alevel4
    seq += ares_down(64) + ares(64) * 3                   # alevel3
    seq += ares_down(128) + ares(128) * 2                 # alevel2
    seq += ares_down(256) + ares(256) * 2                 # alevel1
    seq += ares_down(256)                                 # alevel0
    seq += [("avg_pool", 0, 1), ("fc", 128)]               # avg_pool_everything, fc_no_bias<128>
    return seq


def attach_arch(layers):
    """Check parsed layers against the expected arch; fill in tag/skip ids."""
    exp = expected_arch()
    if len(exp) != len(layers):
        raise ValueError("layer count mismatch: parsed %d expected %d" % (len(layers), len(exp)))
    for i, (e, L) in enumerate(zip(exp, layers)):
        t = e[0]
        if t in ("tag", "skip"):
            if L["type"] != "tag_or_skip":
                raise ValueError("layer %d: expected %s got %s" % (i, t, L["type"]))
            L["type"] = t
            L["id"] = e[1]
            continue
        if L["type"] != t:
            raise ValueError("layer %d: expected %s got %s" % (i, t, L["type"]))
        if t == "con":
            ok = (L["num_filters"], L["nr"], L["stride_y"]) == e[1:] and L["nr"] == L["nc"] and L["stride_x"] == L["stride_y"]
            if not ok:
                raise ValueError("layer %d: con mismatch %s vs %s" % (i, e, {k: L[k] for k in ("num_filters", "nr", "stride_y")}))
        if t in ("max_pool", "avg_pool") and (L["nr"], L["stride_y"]) != e[1:]:
            raise ValueError("layer %d: pool mismatch" % i)
        if t == "add_prev":
            L["id"] = e[1]
        if t == "fc" and (L["num_outputs"] != 128 or L["bias_mode"] != 1):
            raise ValueError("fc mismatch")
    return layers


# ----------------------------------------------------------------------------------------
# numpy float64 reference implementation of dlib's forward pass
# ----------------------------------------------------------------------------------------
def _windows(x, kh, kw, sy, sx, py, px, pad_value=0.0):
    # x: [N,C,H,W] -> [N,C,Ho,Wo,kh,kw]
    if py or px:
        x = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)), constant_values=pad_value)
    N, C, H, W = x.shape
    Ho = (H - kh) // sy + 1
    Wo = (W - kw) // sx + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (N, C, Ho, Wo, kh, kw), (s[0], s[1], s[2] * sy, s[3] * sx, s[2], s[3]), writeable=False)


def _add_padded(a, b):
    # dlib tt::add(dest,src1,src2) with mismatched shapes: dest has the max of each dim,
    # each source is placed at index 0 and treated as zero outside its extent.
    shp = tuple(max(x, y) for x, y in zip(a.shape, b.shape))
    out = np.zeros(shp, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] += a
    out[tuple(slice(0, n) for n in b.shape)] += b
    return out


def reference_forward(layers, chips_u8, verbose=False):
    """chips_u8: [N,150,150,3] uint8 RGB -> [N,128] float64."""
    x = None
    tags = {}
    shapes = []
    for L in layers:
        t = L["type"]
        if t == "input":
            avg = np.array(L["avg"], dtype=np.float64)
            x = ((chips_u8.astype(np.float64) - avg) / 256.0).transpose(0, 3, 1, 2)
        elif t == "con":
            win = _windows(x, L["nr"], L["nc"], L["stride_y"], L["stride_x"], L["pad_y"], L["pad_x"])
            x = np.einsum("nchwij,ocij->nohw", win, L["W"].astype(np.float64), optimize=True)
            x = x + L["b"].astype(np.float64)[None, :, None, None]
        elif t == "affine":
            x = x * L["gamma"].astype(np.float64)[None, :, None, None] + L["beta"].astype(np.float64)[None, :, None, None]
        elif t == "relu":
            x = np.maximum(x, 0)
        elif t == "max_pool":
            x = _windows(x, L["nr"], L["nc"], L["stride_y"], L["stride_x"], L["pad_y"], L["pad_x"], -np.inf).max(axis=(4, 5))
        elif t == "avg_pool":
            if L["nr"] == 0:
                x = x.mean(axis=(2, 3), keepdims=True)
            else:
                if L["pad_y"] or L["pad_x"]:
                    raise NotImplementedError("padded avg_pool")
                x = _windows(x, L["nr"], L["nc"], L["stride_y"], L["stride_x"], 0, 0).mean(axis=(4, 5))
        elif t == "tag":
            tags[L["id"]] = x
        elif t == "skip":
            x = tags[L["id"]]
        elif t == "add_prev":
            x = _add_padded(x, tags[L["id"]])
        elif t == "fc":
            x = x.reshape(x.shape[0], -1) @ L["W"].astype(np.float64)
            if L["b"] is not None:
                x = x + L["b"]
        else:
            raise ValueError(t)
        L["out_shape"] = tuple(x.shape[1:])
        shapes.append(x.shape)
    return x


def describe(layers):
    lines = []
    for i, L in enumerate(layers):
        t = L["type"]
        s = "%3d %-9s" % (i, t)
        if t == "input":
            s += " avg_rgb=(%.4f, %.4f, %.4f) size=%dx%d  x=(pix-avg)/256" % (*L["avg"], L["nr"], L["nc"])
        elif t == "con":
            s += " W%s b%s stride=%d pad=%d" % (tuple(L["W"].shape), tuple(L["b"].shape), L["stride_y"], L["pad_y"])
        elif t == "affine":
            s += " gamma/beta[%d]" % L["gamma"].size
        elif t in ("max_pool", "avg_pool"):
            s += " %s stride=%d pad=%d" % ("%dx%d" % (L["nr"], L["nc"]) if L["nr"] else "everything",
                                            L["stride_y"], L["pad_y"])
        elif t in ("tag", "skip", "add_prev"):
            s += " id=%d" % L["id"]
        elif t == "fc":
            s += " W%s (y = x @ W), no bias" % (tuple(L["W"].shape),)
        if "out_shape" in L:
            s += "  -> %s" % (L["out_shape"],)
        lines.append(s)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# ONNX graph
# ----------------------------------------------------------------------------------------
def build_onnx(layers, fold_affine=True, opset=13):
    import onnx
    from onnx import helper, numpy_helper, TensorProto

    nodes, inits = [], []
    cnt = [0]

    def name(p):
        cnt[0] += 1
        return "%s_%d" % (p, cnt[0])

    def const(arr, p):
        n = name(p)
        inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(op, inputs, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    x = None
    shape = None         # current (C,H,W)
    tags = {}
    i = 0
    while i < len(layers):
        L = layers[i]
        t = L["type"]
        if t == "input":
            x = node("Cast", ["images"], to=TensorProto.FLOAT)
            x = node("Sub", [x, const(np.array(L["avg"], np.float32), "mean_rgb")])
            x = node("Mul", [x, const(np.array(1.0 / 256.0, np.float32), "inv256")])
            x = node("Transpose", [x], perm=[0, 3, 1, 2])
        elif t == "con":
            W = L["W"].astype(np.float64)
            b = L["b"].astype(np.float64)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            folded = fold_affine and nxt is not None and nxt["type"] == "affine"
            if folded:
                g = nxt["gamma"].astype(np.float64)
                W = W * g[:, None, None, None]
                b = b * g + nxt["beta"].astype(np.float64)
            x = node("Conv", [x, const(W.astype(np.float32), "W"), const(b.astype(np.float32), "B")],
                     kernel_shape=[L["nr"], L["nc"]], strides=[L["stride_y"], L["stride_x"]],
                     pads=[L["pad_y"], L["pad_x"], L["pad_y"], L["pad_x"]])
            if folded:
                i += 1
        elif t == "affine":
            x = node("Mul", [x, const(L["gamma"].reshape(1, -1, 1, 1).astype(np.float32), "gamma")])
            x = node("Add", [x, const(L["beta"].reshape(1, -1, 1, 1).astype(np.float32), "beta")])
        elif t == "relu":
            x = node("Relu", [x])
        elif t == "max_pool":
            x = node("MaxPool", [x], kernel_shape=[L["nr"], L["nc"]], strides=[L["stride_y"], L["stride_x"]],
                     pads=[L["pad_y"], L["pad_x"], L["pad_y"], L["pad_x"]])
        elif t == "avg_pool":
            if L["nr"] == 0:
                x = node("GlobalAveragePool", [x])
            else:
                x = node("AveragePool", [x], kernel_shape=[L["nr"], L["nc"]],
                         strides=[L["stride_y"], L["stride_x"]], pads=[0, 0, 0, 0])
        elif t == "tag":
            tags[L["id"]] = (x, shape)
        elif t == "skip":
            x, shape = tags[L["id"]]
        elif t == "add_prev":
            y, yshape = tags[L["id"]]
            tgt = tuple(max(a, c) for a, c in zip(shape, yshape))
            ops = []
            for v, s in ((x, shape), (y, yshape)):
                if s != tgt:
                    pads = [0, 0, 0, 0] + [0] + [tgt[k] - s[k] for k in range(3)]
                    v = node("Pad", [v, const(np.array(pads, np.int64), "pads")], mode="constant")
                ops.append(v)
            x = node("Add", ops)
        elif t == "fc":
            x = node("Flatten", [x], axis=1)
            x = node("MatMul", [x, const(L["W"].astype(np.float32), "fcW")])
            if L["b"] is not None:
                x = node("Add", [x, const(L["b"].astype(np.float32), "fcB")])
        shape = layers[i]["out_shape"]    # set by reference_forward(); i = last consumed layer
        i += 1
    nodes.append(helper.make_node("Identity", [x], ["embeddings"], name="out"))
    g = helper.make_graph(
        nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 150, 150, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 128])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="convert_dlib_to_onnx.py")
    m.ir_version = 8
    m.doc_string = ("dlib_face_recognition_resnet_model_v1 converted to ONNX. Input: uint8 RGB aligned "
                    "150x150 face chips NHWC (dlib.get_face_chip(img, shape, 150, 0.25)). Output: raw "
                    "128-d descriptor (not L2-normalised), as dlib compute_face_descriptor.")
    onnx.checker.check_model(m)
    return m


def convert(dat: str, out: str, fold: bool = True, opset: int = 13, check_images=(), verbose: bool = False) -> dict:
    """Parses dat, writes the ONNX model to out and checks it against the float64 reference."""
    loss, layers = parse_dat(dat)
    attach_arch(layers)
    if verbose:
        print("loss: %s margin=%g dist_thresh=%g" % (loss["loss"], loss["margin"], loss["dist_thresh"]))

    # self-check inputs: random noise + smooth synthetic images (+ optional real chips)
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)]
    yy, xx = np.mgrid[0:150, 0:150]
    for k in range(3):
        img = np.stack([(128 + 100 * np.sin((xx + 13 * k) / (9 + k)) * np.cos(yy / (11 + 2 * k))),
                        (xx + yy + 40 * k) % 256, 255 - (xx * (k + 1)) % 256], -1)
        chips.append(np.clip(img, 0, 255).astype(np.uint8))
    for f in check_images:
        from PIL import Image
        chips.append(np.asarray(Image.open(f).convert("RGB").resize((150, 150))))
    chips = np.stack(chips)
    ref = reference_forward(layers, chips)
    if verbose:
        print("parsed %d layers (forward order):" % len(layers))
        print(describe(layers))

    import onnx
    import onnxruntime as ort

    onnx.save(build_onnx(layers, fold_affine=fold, opset=opset), out)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    single = np.concatenate([sess.run(None, {"images": chips[i:i + 1]})[0] for i in range(len(chips))])
    batched = sess.run(None, {"images": chips})[0]
    cos = (single * ref).sum(1) / np.linalg.norm(single, axis=1) / np.linalg.norm(ref, axis=1)
    stats = {"layers": len(layers), "min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(single - ref).max()),
             "batch_vs_single_max_abs_diff": float(np.abs(batched - single).max())}
    if stats["min_cosine"] < 0.99999 or stats["max_abs_diff"] > 1e-3:
        raise SystemExit(f"{out}: ONNX disagrees with the dlib reference implementation: {stats}")
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dat", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-fold", action="store_true", help="keep affine layers as Mul/Add instead of folding into Conv")
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--check-images", nargs="*", default=[],
                    help="optional 150x150 RGB chip image files for the self-check (else random + synthetic)")
    args = ap.parse_args()
    stats = convert(args.dat, args.out, fold=not args.no_fold, opset=args.opset, check_images=args.check_images,
                    verbose=True)
    print("wrote", args.out, "; self-check vs numpy float64 reference:", stats)


if __name__ == "__main__":
    main()
