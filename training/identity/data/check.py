"""What a streamed training source holds, read end to end: ``python -m training.identity.data
check --rec FILE.rec | --folder DIR [--json OUT]``.

A pack is read record by record in file order (every record the ``.idx`` lists: framing, header,
identity ranges, and each image decoded with OpenCV unless ``decode`` is off). A pack that is not
RecordIO where it should be (bad magic, truncated, an index past the end, overlapping records,
a header whose records are missing) raises :class:`RecordIOError` naming the file and the record:
that is a damaged download, and the command exits 2 on it. An image that does not decode, or a
label outside the pack's classes, is a broken record: counted and listed (the first
``LISTED``), as the training readers would skip it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.identity.data.recordio import RecordFile, RecordIOError, idx_path_for, read_index, unpack
from training.identity.data.streamed import FolderListing, PackLayout, _decode, yaw_sidecar_path

LISTED = 20  # broken records named in the report (all are counted)


def _sizes(counter: Counter) -> dict[str, int]:
    return {f"{w}x{h}": n for (w, h), n in counter.most_common()}


def _sidecar(source) -> str | None:
    path = yaw_sidecar_path(source)
    return str(path) if path.exists() else None


def check_pack(rec, decode: bool = True, progress: bool = True) -> dict:
    rec = Path(rec)
    if not rec.is_file():
        raise RecordIOError(f"{rec}: RecordIO pack not found")
    keys, offsets = read_index(idx_path_for(rec))
    if not len(keys):
        raise RecordIOError(f"{idx_path_for(rec)}: the index lists no records")
    file = RecordFile(rec)
    layout = PackLayout(file, keys, offsets, progress)
    classes = layout.num_classes
    first_identity, end_identity = layout.header or (0, 0)
    # header packs: each image record's own label, and the class its identity record's range gives it
    own_label = np.full(first_identity, -1, np.int32)
    range_label = np.full(first_identity, -1, np.int32)
    order = np.argsort(offsets, kind="stable")
    sizes: Counter = Counter()
    broken: list[dict] = []
    n_broken = n_images = n_identity_records = n_other = 0
    labels_seen: set[int] = set()
    prev_end, prev_key, indexed_bytes = 0, None, 0
    bar = tqdm(order, desc=f"checking {rec.name}", unit="record", disable=not progress, mininterval=2)
    for row in bar:
        key, off = int(keys[row]), int(offsets[row])
        if off < prev_end:
            raise RecordIOError(f"{rec}: record {key} at offset {off} overlaps record {prev_key} (ends at {prev_end})")
        payload, end = file.read(off, key)
        indexed_bytes += end - off
        prev_end, prev_key = end, key
        where = f"{rec}: record {key}"
        header, data = unpack(payload, where)
        if layout.header is not None and not 1 <= key < end_identity:
            n_other += key != 0
            continue
        if layout.header is not None and key >= first_identity:
            n_identity_records += 1
            a, b = (int(v) for v in header.labels[:2]) if header.flag >= 2 else (-1, -1)
            if not 1 <= a <= b <= first_identity:
                raise RecordIOError(f"{where}: identity record's image range ({a}, {b}) is outside 1..{first_identity}")
            range_label[a:b] = key - first_identity
            continue
        n_images += 1
        label = header.label
        reason = None
        if not np.isfinite(label) or not 0 <= int(label) < classes:
            reason = f"label {label:g} outside the pack's classes 0..{classes - 1}"
        elif decode:
            image = _decode(data)
            if image is None:
                reason = f"the image ({len(data)} bytes) does not decode"
            else:
                sizes[(image.shape[1], image.shape[0])] += 1
        if reason is not None:
            n_broken += 1
            if len(broken) < LISTED:
                broken.append({"record": key, "reason": reason})
            continue
        labels_seen.add(int(label))
        if layout.header is not None:
            own_label[key] = int(label)
    file_size = file.size
    file.close()
    checked = (own_label >= 0) & (range_label >= 0)
    return {
        "source": str(rec),
        "format": "recordio",
        "identities": classes,
        "images": n_images,
        "broken": n_broken,
        "broken_records": broken,
        "image_sizes": _sizes(sizes) if decode else "not decoded (--headers-only)",
        "identities_with_images": len(labels_seen),
        "records": len(keys),
        "header": (
            {"images": [1, first_identity - 1], "identity_records": [first_identity, end_identity - 1]}
            if layout.header
            else None
        ),
        "identity_records": n_identity_records,
        # image records whose own label differs from the identity record whose range holds them
        "label_range_mismatches": int((own_label[checked] != range_label[checked]).sum()),
        "other_records": n_other,
        "bytes": file_size,
        "unindexed_bytes": file_size - indexed_bytes,
        "yaw_sidecar": _sidecar(rec),
    }


def check_folder(root, decode: bool = True, progress: bool = True) -> dict:
    listing = FolderListing(root, progress)
    sizes: Counter = Counter()
    broken: list[dict] = []
    n_broken = 0
    with_images: set[int] = set()
    for path, label in tqdm(
        zip(listing.paths, listing.labels),
        total=len(listing.paths),
        desc=f"checking {listing.root.name}",
        unit="image",
        disable=not progress,
        mininterval=2,
    ):
        name = os.fsdecode(path)
        reason = None
        if decode:
            try:
                image = _decode(np.fromfile(listing.root / name, np.uint8))
            except OSError as err:
                image, reason = None, f"cannot read: {err.strerror or err}"
            if image is None:
                reason = reason or "not an image OpenCV can decode"
            else:
                sizes[(image.shape[1], image.shape[0])] += 1
        if reason is not None:
            n_broken += 1
            if len(broken) < LISTED:
                broken.append({"image": name, "reason": reason})
            continue
        with_images.add(int(label))
    return {
        "source": str(listing.root),
        "format": "folder",
        "identities": len(listing.classes),
        "images": len(listing.paths),
        "broken": n_broken,
        "broken_images": broken,
        "image_sizes": _sizes(sizes) if decode else "not decoded (--headers-only)",
        "identities_with_images": len(with_images),
        "empty_identity_folders": len(listing.empty),
        "empty_identity_folder_names": listing.empty[:LISTED],
        "ignored_entries": listing.stray,
        "yaw_sidecar": _sidecar(listing.root),
    }
