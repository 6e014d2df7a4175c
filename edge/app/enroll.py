"""Enrol people into the gallery, and the photo -> face templates chain the runtime reuses.

    python -m edge.enroll add NAME --images DIR [--append] [--embedder-model FILE] [--gallery FILE]
    python -m edge.enroll list [--json] [--gallery FILE]
    python -m edge.enroll remove NAME [--gallery FILE]
    python -m edge.enroll export FILE [--gallery FILE]
    python -m edge.enroll import FILE [--on-conflict skip|replace|error] [--gallery FILE]
    python -m edge.enroll check [--gallery FILE]

``add`` embeds the largest face of every photo under DIR (recursively) and stores one template
per photo, with the photo's head yaw and its path relative to DIR (never the absolute path: it
would leak the enrolling machine's folder layout into exports). Photos without a face are
reported and skipped. Errors print one line on stderr and exit with status 2.

The chain of :func:`embed_face`: BlazeFace short range -> detector box to landmark crop
(``BLAZEFACE_SHORT_CROP``) -> PIPNet 68 landmarks -> head pose yaw -> the crop the identity model names ->
identity embedding (the model's first output), L2-normalised.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from edge.imageio import ImageReadError, list_images, read_image_bgr
from edge.shipped import SHIPPED_IDENTITY, SHIPPED_LANDMARKS
from edge.storage.gallery.records import GalleryError, Template, validate_name
from edge.storage.gallery.store import ON_CONFLICT, Gallery

log = logging.getLogger(__name__)

EDGE_DIR = Path(__file__).resolve().parents[1]  # edge/
LANDMARK_MODEL = SHIPPED_LANDMARKS
# The shipped identity model (edge.shipped); the caller may name another.
_SHIPPED_IDENTITY = SHIPPED_IDENTITY
DEFAULT_EMBEDDER_MODEL: Path | None = _SHIPPED_IDENTITY if _SHIPPED_IDENTITY.exists() else None
DEFAULT_GALLERY = Path("gallery.sqlite")  # the runtime config's default too (gallery.path)
DETECTOR_CONFIG = {"type": "blazeface", "range": "short"}
NO_MODEL_MESSAGE = f"no identity model at {_SHIPPED_IDENTITY}: pass --embedder-model FILE"


class EmbedderUnavailableError(RuntimeError):
    """No identity model is available to embed faces with."""


@dataclass(frozen=True, eq=False)
class FaceTemplate:
    """One face found in a photo: ``embedding`` (D,) float32 unit vector, ``yaw_deg`` its head
    yaw in degrees (sign as in :mod:`edge.geometry.headpose`), ``box`` (4,) the detector's
    [x1, y1, x2, y2] in the photo's pixels, ``score`` the detector's confidence."""

    embedding: np.ndarray
    yaw_deg: float
    box: np.ndarray
    score: float = 1.0

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


@runtime_checkable
class FaceEmbedder(Protocol):
    """Anything that turns a uint8 BGR (or gray) photo into one :class:`FaceTemplate` per face."""

    def embed_photo(self, image_bgr: np.ndarray) -> list[FaceTemplate]: ...


@dataclass
class FaceModels:
    """The loaded models of the chain. ``embedder`` is a :class:`edge.runtime.ModelRunner`."""

    detector: Any
    landmarker: Any
    embedder: Any
    crop_policy: Any

    @classmethod
    def load(
        cls,
        embedder_model: Path | str,
        landmark_model: Path | str = LANDMARK_MODEL,
        detector: Mapping[str, Any] | None = None,
        threads: int = 1,
    ) -> FaceModels:
        # Imported here so listing or removing names never loads a model runtime.
        from edge.detect.registry import build_detector
        from edge.landmarks.crop import BLAZEFACE_SHORT_CROP
        from edge.landmarks.landmarker import Landmarker
        from edge.runtime import load_model

        detector_config = dict(detector or DETECTOR_CONFIG)
        if detector_config.get("type") == "blazeface":
            detector_config.setdefault("threads", threads)
        runner = load_model(embedder_model, threads=threads)
        width, height = runner.meta.input_size
        if width != height:
            raise ValueError(
                f"{embedder_model}: input_size {width}x{height}: expected a square input (aligned faces are square)"
            )
        from edge.core.faces import alignment_for

        alignment_for(runner)  # a malformed alignment record fails here, naming the model
        return cls(
            detector=build_detector(detector_config),
            landmarker=Landmarker(load_model(landmark_model, threads=threads)),
            embedder=runner,
            # The measured relation between BlazeFace short-range boxes and landmark crops.
            crop_policy=BLAZEFACE_SHORT_CROP,
        )


def embed_face(image: np.ndarray, models: FaceModels) -> list[FaceTemplate]:
    """Every face in ``image`` (uint8 BGR or gray, any size) as a :class:`FaceTemplate`, in the
    detector's order (best score first). A face whose head pose cannot be fitted is skipped."""
    from edge.core.faces import alignment_for, device_refine, embed_batch, prepare_faces

    detections = models.detector.detect(image)
    if not detections:
        return []
    boxes = [models.crop_policy.crop_box(det.box) for det in detections]
    # All faces of the photo in one landmark batch, re-cropped as the runtime does.
    refine = device_refine(models.landmarker)
    prepared = prepare_faces(image, boxes, models.landmarker, alignment_for(models.embedder), refine=refine)
    kept = []
    for det, face in zip(detections, prepared):
        if face is None:
            log.warning("face at %s skipped: its landmarks give no head pose", [round(float(v)) for v in det.box])
            continue
        kept.append((det, face))
    if not kept:
        return []
    embeddings = embed_batch(models.embedder, [face.aligned for _, face in kept])
    return [FaceTemplate(emb, float(face.yaw), det.box, det.score) for (det, face), emb in zip(kept, embeddings)]


class ModelFaceEmbedder:
    """:class:`FaceEmbedder` over the model chain of :func:`embed_face`."""

    def __init__(self, models: FaceModels):
        self.models = models

    def embed_photo(self, image_bgr: np.ndarray) -> list[FaceTemplate]:
        return embed_face(image_bgr, self.models)


def build_embedder(config: Mapping[str, Any]) -> FaceEmbedder:
    """A :class:`FaceEmbedder` from ``{"embedder_model": FILE, "landmark_model": FILE,
    "detector": {...}, "threads": N}`` (all but embedder_model optional)."""
    known = {"embedder_model", "landmark_model", "detector", "threads"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"embedder config: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    model = config.get("embedder_model") or DEFAULT_EMBEDDER_MODEL
    if model is None:
        raise EmbedderUnavailableError(NO_MODEL_MESSAGE)
    models = FaceModels.load(
        model,
        landmark_model=config.get("landmark_model") or LANDMARK_MODEL,
        detector=config.get("detector"),
        threads=int(config.get("threads", 1)),
    )
    return ModelFaceEmbedder(models)


# ----------------------------------------------------------------------------- CLI


def enrol_photos(embedder: FaceEmbedder, images_dir: Path) -> tuple[list[Template], list[str]]:
    """One template per photo under ``images_dir`` (its largest face), plus one note per skipped photo."""
    templates: list[Template] = []
    notes: list[str] = []
    for path in list_images(images_dir):
        rel = path.relative_to(images_dir).as_posix()
        try:
            image = read_image_bgr(path)
        except ImageReadError as err:
            notes.append(f"skipped {err}")
            continue
        faces = embedder.embed_photo(image)
        if not faces:
            notes.append(f"skipped {rel}: no face found")
            continue
        # An enrolment photo shows the person; anyone else in it is smaller (further away).
        face = max(faces, key=lambda f: f.area)
        if len(faces) > 1:
            notes.append(f"{rel}: {len(faces)} faces, used the largest")
        templates.append(Template(face.embedding, face.yaw_deg, rel))
    return templates, notes


def _format_yaw(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "-"
    return f"{lo:+.0f}..{hi:+.0f}" if round(lo) != round(hi) else f"{lo:+.0f}"


def _key(args) -> bytes | None:
    if getattr(args, "key_file", None) is None:
        return None
    from edge.storage.keys import KeyFileError, load_key

    try:
        return load_key(args.key_file)
    except KeyFileError as err:
        raise GalleryError(f"--key-file {err}") from None


def _open(args, without_key: bool = False, **kwargs) -> Gallery:
    """The gallery of ``args``, with the key of ``--key-file`` when given."""
    return Gallery.open(args.gallery, key=_key(args), without_key=without_key, **kwargs)


def _cmd_keygen(args) -> int:
    from edge.storage.keys import KeyFileError, generate_key

    try:
        path = generate_key(args.key_file)
    except KeyFileError as err:
        raise GalleryError(f"--key-file {err}") from None
    print(
        f"wrote a new gallery key to {path} (mode 0600); keep a copy somewhere safe: without it the templates are lost"
    )
    return 0


def _cmd_add(args) -> int:
    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise GalleryError(f"--images {images_dir}: no such folder")
    if not list_images(images_dir):
        raise GalleryError(f"--images {images_dir}: folder holds no image files")
    # Refuse a bad or taken name, or a missing or wrong key, before the slow part (models and photos).
    validate_name(args.name)
    _key(args)  # a missing, open or malformed key file is said now, for a new gallery too
    if Path(args.gallery).exists():
        with _open(args, without_key=args.key_file is None, create=False) as gallery:
            if gallery.encrypted and args.key_file is None:
                raise GalleryError(f"{args.gallery}: templates are encrypted: pass --key-file FILE to enrol")
            if not args.append and args.name in gallery:
                raise GalleryError(f"identity {args.name!r} is already in {args.gallery}: pass --append to add photos")
    embedder = build_embedder(
        {"embedder_model": args.embedder_model, "landmark_model": args.landmark_model, "threads": args.threads}
    )
    templates, notes = enrol_photos(embedder, images_dir)
    for note in notes:
        print(f"edge.enroll: {note}", file=sys.stderr)
    if not templates:
        raise GalleryError(f"--images {images_dir}: no face found in any photo, nothing enrolled")
    with _open(args, dim=int(templates[0].embedding.size)) as gallery:
        if args.append and args.name in gallery:
            gallery.add_templates(args.name, templates)
        else:
            gallery.add_identity(args.name, templates)
        ident = gallery.identity(args.name)
        encrypted = gallery.encrypted
    print(
        f"enrolled {ident.name!r}: {len(templates)} new template(s), {ident.template_count} in all, "
        f"yaw {_format_yaw(ident.yaw_min, ident.yaw_max)} deg -> {args.gallery}"
    )
    if not encrypted:
        print(f"edge.enroll: {args.gallery} is not encrypted (templates are plain): see --key-file", file=sys.stderr)
    return 0


def _cmd_list(args) -> int:
    # Listing reads names only: never the key (which could also turn an empty gallery encrypted).
    with Gallery.open(args.gallery, create=False, without_key=True) as gallery:
        identities = gallery.list()
        dim = gallery.dim
    if args.json:
        rows = [
            {
                "name": i.name,
                "templates": i.template_count,
                "yaw_min": i.yaw_min,
                "yaw_max": i.yaw_max,
                "created": i.created,
                "metadata": i.metadata,
            }
            for i in identities
        ]
        print(json.dumps({"gallery": str(args.gallery), "dim": dim, "identities": rows}, ensure_ascii=False))
        return 0
    width = max([len("name")] + [len(i.name) for i in identities])
    print(f"{'name':<{width}}  templates  yaw (deg)   enrolled")
    for i in identities:
        print(f"{i.name:<{width}}  {i.template_count:>9}  {_format_yaw(i.yaw_min, i.yaw_max):<10}  {i.created}")
    print(f"{len(identities)} identities, {sum(i.template_count for i in identities)} templates, dim {dim}")
    return 0


def _cmd_remove(args) -> int:
    with _open(args, without_key=True, create=False) as gallery:
        count = gallery.remove(args.name)
    print(f"removed {args.name!r} and its {count} template(s); erased from {args.gallery}")
    return 0


def _cmd_export(args) -> int:
    with _open(args, create=False) as gallery:
        count = gallery.export(args.file)
    print(f"exported {count} identities to {args.file}")
    return 0


def _cmd_import(args) -> int:
    with _open(args) as gallery:
        result = gallery.import_(args.file, on_conflict=args.on_conflict)
    print(f"imported {args.file}: {result.added} added, {result.replaced} replaced, {result.skipped} skipped")
    return 0


def _cmd_check(args) -> int:
    with _open(args, without_key=True, create=False) as gallery:
        report = gallery.integrity_check()
    for problem in report.problems:
        print(f"{args.gallery}: {problem}")
    state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{args.gallery}: {state} ({report.identities} identities, {report.templates} templates)")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    # --gallery on every subcommand (after the subcommand name, as users type it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--gallery", type=Path, default=DEFAULT_GALLERY, help=f"gallery file (default {DEFAULT_GALLERY})"
    )
    common.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="gallery key (python -m edge.enroll keygen): a new gallery is encrypted with it; an encrypted one "
        "needs it to add, import or export (list, remove and check do not)",
    )
    parser = argparse.ArgumentParser(prog="python -m edge.enroll", description="Manage the face gallery.")
    sub = parser.add_subparsers(dest="command", required=True)

    add = sub.add_parser("add", parents=[common], help="enrol NAME from the photos in a folder")
    add.add_argument("name")
    add.add_argument("--images", required=True, help="folder of photos of this person (searched recursively)")
    add.add_argument("--append", action="store_true", help="add templates to NAME if already enrolled")
    add.add_argument("--embedder-model", type=Path, default=None, help="identity model (.onnx/.tflite with metadata)")
    add.add_argument("--landmark-model", type=Path, default=None, help=f"default {LANDMARK_MODEL.name}")
    add.add_argument("--threads", type=int, default=1)
    add.set_defaults(run=_cmd_add)

    listing = sub.add_parser("list", parents=[common], help="list enrolled identities")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.set_defaults(run=_cmd_list)

    remove = sub.add_parser("remove", parents=[common], help="remove NAME and erase it from the file")
    remove.add_argument("name")
    remove.set_defaults(run=_cmd_remove)

    export = sub.add_parser(
        "export", parents=[common], help="write the gallery to a JSON-lines file (plain templates, mode 0600)"
    )
    export.add_argument("file", type=Path)
    export.set_defaults(run=_cmd_export)

    imp = sub.add_parser("import", parents=[common], help="read an export file into the gallery")
    imp.add_argument("file", type=Path)
    imp.add_argument("--on-conflict", choices=ON_CONFLICT, default="skip", help="for names already enrolled")
    imp.set_defaults(run=_cmd_import)

    check = sub.add_parser("check", parents=[common], help="check the gallery file's integrity")
    check.set_defaults(run=_cmd_check)

    keygen = sub.add_parser("keygen", help="write a new random gallery key (mode 0600; never overwrites)")
    keygen.add_argument("--key-file", type=Path, required=True, help="where to write the key")
    keygen.set_defaults(run=_cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (GalleryError, EmbedderUnavailableError, ValueError, OSError) as err:
        # ModelFileError, MetaError and ImageReadError are ValueErrors that already name their file.
        print(f"edge.enroll: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
