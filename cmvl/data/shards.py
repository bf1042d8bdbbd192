"""Image-text tar shards in the layout img2dataset writes: `<shard>.tar` holding, per sample, `<key>.jpg` (or
.png / .webp) with `<key>.txt` (the caption) and optionally `<key>.json` (`image_id`, `caption_id`, `caption`).

The `webdataset` library reads the shards as a stream (`read_shard`: its tar iterator and key grouping, so a sample
is what webdataset calls one); the stdlib `tarfile` walks member headers where a position is needed without reading
the data (`count_samples`) and indexes a (small) validation set (`index_shard`).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cmvl.data.images import decode_image
from cmvl.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # what img2dataset's encode_format writes
ID_MASK = 2**63 - 1


def expand_patterns(patterns: str | list[str], *, key: str) -> list[str]:
    """The shard files of one or more patterns (local paths, brace patterns `{000..099}`, `::`-separated lists as
    webdataset takes them), in the order given; each must exist."""
    from webdataset.shardlists import expand_urls

    given = [patterns] if isinstance(patterns, str) else list(patterns)
    if not given:
        raise DataError(f"{key}: no shard pattern given")
    shards = [path for pattern in given for path in expand_urls(str(pattern))]
    missing = [path for path in shards if not Path(path).is_file()]
    if missing:
        raise DataError(f"{key}: {len(missing)} of {len(shards)} shard files not found, e.g. {missing[0]}")
    return shards


def digest_id(data: bytes) -> int:
    """A stable non-negative 63-bit id of some bytes (images with the same bytes share it)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & ID_MASK


@dataclass
class ShardSample:
    """One decoded-to-fields sample: the image's bytes, its caption and ids."""

    key: str
    image: bytes
    caption: str
    image_id: int
    caption_id: int


def sample_fields(raw: dict, *, where: str) -> ShardSample:
    """The fields of one grouped sample (`{"__key__", "jpg": bytes, "txt": bytes, ...}`); a `DataError` names what
    is missing or malformed (training skips and counts it, like an unreadable image)."""
    key = raw.get("__key__", "?")
    image = next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)
    if image is None:
        raise DataError(f"sample {key} in {where} has no image (.{' / .'.join(IMAGE_EXTENSIONS)})")
    meta: dict = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"sample {key} in {where}: unreadable .json ({err})") from None
        if not isinstance(meta, dict):
            meta = {}
    caption = raw["txt"].decode("utf-8", errors="replace") if "txt" in raw else meta.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"sample {key} in {where} has no caption (.txt, or `caption` in its .json)")
    image_id, caption_id = meta.get("image_id"), meta.get("caption_id")
    return ShardSample(
        key=key,
        image=image,
        caption=caption.strip(),
        image_id=image_id if isinstance(image_id, int) and image_id >= 0 else digest_id(image),
        caption_id=caption_id
        if isinstance(caption_id, int) and caption_id >= 0
        else digest_id(f"{where}/{key}".encode()),
    )


def decode_sample_image(data: bytes, *, name: str) -> Image.Image:
    return decode_image(io.BytesIO(data), name=name)


class TarSamples:
    """How the training stream reads tar shards (`cmvl.data.streaming.SampleReader`): webdataset's grouped samples,
    decoded to an image and a `captions` row."""

    errors = (tarfile.TarError, OSError, ValueError, EOFError)  # a truncated or garbled shard

    def __init__(self) -> None:
        from cmvl.data.sources.coco import CAPTIONS_SCHEMA

        self.schema = CAPTIONS_SCHEMA

    def read(self, shard: str, skip: int) -> Iterator[dict]:
        return read_shard(shard, skip=skip)

    def decode(self, raw: dict, shard: str) -> tuple[Image.Image, dict]:
        sample = sample_fields(raw, where=shard)
        image = decode_sample_image(sample.image, name=f"{shard}:{sample.key}")
        row = {"image_id": sample.image_id, "image": "", "caption_id": sample.caption_id, "caption": sample.caption}
        return image, row


def read_shard(path: str, *, skip: int = 0) -> Iterator[dict]:
    """The grouped samples of one shard as webdataset reads them (a stream: one sample in memory at a time), after
    the first `skip` (read past, not decoded)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(path, "rb") as stream:
        files = ({**f, "__url__": path} for f in tar_file_iterator(stream))
        for i, sample in enumerate(group_by_keys(files)):
            if i >= skip:
                yield sample


def _grouped_members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) per sample, grouped as webdataset groups them (`base_plus_ext`, consecutive
    members of one key); member headers only, the data is not read."""
    from webdataset.tariterators import base_plus_ext

    key, members = None, {}
    for info in tar:
        if not info.isreg() or info.name.split("/")[-1].startswith("__"):
            continue
        prefix, suffix = base_plus_ext(info.name)
        if prefix is None:
            continue
        if prefix != key:
            if members:
                yield key, members
            key, members = prefix, {}
        members[suffix.lower()] = info
    if members:
        yield key, members


SIZES_FILE = "sizes.json"  # beside the shards: {"<shard file name>": samples, ...} (what cmvl data shards writes)


def shard_counts(shards: list[str]) -> list[int]:
    """Samples per shard: from the `sizes.json` beside a shard where it names that shard, else counted from the
    shard's member headers."""
    sizes: dict[Path, dict] = {}
    counts = []
    for shard in shards:
        folder = Path(shard).parent
        if folder not in sizes:
            try:
                sizes[folder] = json.loads((folder / SIZES_FILE).read_text())
            except (OSError, ValueError):
                sizes[folder] = {}
        given = sizes[folder].get(Path(shard).name) if isinstance(sizes[folder], dict) else None
        counts.append(given if isinstance(given, int) and given >= 0 else count_samples(shard))
    return counts


def count_samples(path: str) -> int:
    """How many samples a shard holds (member headers only: tarfile seeks past the data)."""
    try:
        with tarfile.open(path, "r:") as tar:
            return sum(1 for _ in _grouped_members(tar))
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"shard {path}: not a readable tar file ({err})") from None


def index_shard(path: str, *, skip_bad: bool = False) -> Iterator[tuple[ShardSample, str]]:
    """(sample, image location) for every sample of a shard; the location (`<shard>@<offset>+<size>`, see
    `read_located_image`) replaces the image bytes, which are not kept. A sample without an image or a caption is
    an error, or with `skip_bad` left out."""
    try:
        with tarfile.open(path, "r:") as tar:
            for key, members in _grouped_members(tar):
                raw = {ext: tar.extractfile(info).read() for ext, info in members.items()}
                image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
                try:
                    sample = sample_fields({"__key__": key, **raw}, where=path)
                except DataError:
                    if skip_bad:
                        continue
                    raise
                info = members[image_ext]
                yield sample, f"{path}@{info.offset_data}+{info.size}"
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"shard {path}: not a readable tar file ({err})") from None


def read_located_image(location: str) -> Image.Image:
    """The image at a location `index_shard` made."""
    path, _, span = location.rpartition("@")
    offset, _, size = span.partition("+")
    try:
        with open(path, "rb") as f:
            f.seek(int(offset))
            data = f.read(int(size))
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable image: {location} ({err})") from None
    return decode_sample_image(data, name=location)
