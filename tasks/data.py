"""Datasets of the inner tasks, as numpy arrays split into ``train``, ``valid`` and ``test``.

Three splits of distinct examples, never mixed: inner training draws from ``train``,
meta-training's held-out objective and meta-validation from ``valid``, and only the
evaluation's held-out metrics (``lopt-eval``) from ``test``.

Embedded (offline, shipped with the dependencies):

* **digits**: scikit-learn's ``load_digits``, 1797 8x8 grey images with values 0..16, all
  distinct. Split: a fixed shuffle (``numpy.random.default_rng(0)``) of the distinct images;
  the first 180 are ``test``, the next 179 ``valid``, the other 1438 ``train``.
* **pydoc text**: CPython's ``pydoc_data.topics.topics`` (the help texts), the topics in
  sorted key order joined by blank lines, UTF-8 encoded (~465k bytes). The text is cut into
  paragraphs (at blank lines); a paragraph that repeats an earlier one ("See also:", shared
  notes and examples, ~90k bytes) is dropped, so no paragraph is in two splits. The distinct
  paragraphs, in corpus order, are grouped into blocks of about :data:`TEXT_BLOCK_BYTES`,
  and a fixed shuffle of the blocks gives 80% of the bytes to ``train`` and 10% each to
  ``valid`` and ``test``. Each split is its blocks joined by blank lines in corpus order:
  distinct spans of the corpus, with the same mix of topics in every split.
* **letters**: the glyphs of the letters A..J (class 0..9), each class's examples its
  upper-case and its lower-case glyph, rendered from the TrueType fonts that matplotlib
  ships (``mpl-data/fonts/ttf``) with Pillow's FreeType renderer: each glyph at
  :data:`GLYPH_RENDER_SIZE` pixels, cropped to its ink, centred on a square frame in which its
  longer side spans :data:`GLYPH_FILL` of the frame, and area-averaged (:func:`area_resize`)
  to 8x8 grey images with values 0..255 (ink coverage; the digits' 0..16 are the same
  coverage of a 4x4 block of their 32x32 bitmaps). A font is used if every one of the 20
  characters maps to a glyph of that name (symbol fonts map letters' codes to other glyphs),
  and every glyph renders a non-blank image unlike every other image kept so far (fonts in
  sorted file-name order), so all images are distinct. matplotlib 3.11 gives 22 fonts
  (DejaVu Sans, Sans Mono and Serif with their bold and oblique or italic variants, the four
  STIXGeneral styles, and Computer Modern cmb10, cmmi10, cmr10, cmss10, cmti10, cmtt10).
  Split by font, never by glyph: a fixed shuffle (``default_rng(0)``) of the fonts' sorted
  names, the first :data:`LETTERS_HELD_OUT_FONTS` ``["test"]`` fonts ``test``, the next
  ``["valid"]`` ``valid`` and the rest ``train``, so a held-out split holds only typefaces
  never trained on. Rendering is deterministic for a given matplotlib (its fonts) and Pillow
  (its FreeType) version; other versions may shift some pixels.

Real (tensorflow-datasets, read with ``tfds.data_source`` from ``array_record`` files, no
TensorFlow needed to read; preparing them needs TensorFlow and the internet once):

* images (``fashion_mnist``, ``cifar10``; features ``image``/``label``): the dataset's
  own ``test`` split; its ``train`` split shuffled once (``default_rng(0)``), the first
  :data:`TFDS_VALID_FRACTION` of it ``valid`` and the rest ``train``; resized by exact area
  averaging (:func:`area_resize`) and stored as uint8.
* text (``lm1b``; feature ``text``): sentences in stored order (tfds shuffles them when
  preparing) joined by newlines into one byte stream, up to a byte budget per split: the
  first ``max_train_bytes`` of the training sentences are ``train``, the next
  ``max_valid_bytes`` ``valid``, and the dataset's own test sentences ``test``.

Arrays stay uint8 (4x smaller than float32); samplers convert batches to float inside jit.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

Split = dict[str, np.ndarray]
Splits = dict[str, Split]

SPLIT_NAMES = ("train", "valid", "test")
DIGITS_HELD_OUT = {"test": 180, "valid": 179}
"""Images of each held-out split of the digits, taken in this order from the shuffle."""
LETTERS = "ABCDEFGHIJ"
"""The letters' classes, in label order; each class's examples are its upper- and
lower-case glyphs."""
LETTERS_HELD_OUT_FONTS = {"test": 4, "valid": 3}
"""Fonts of each held-out split of the letters, taken in this order from the shuffle."""
GLYPH_RENDER_SIZE = 128
"""Font size, in pixels, at which a glyph is rendered before it is area-averaged to 8x8."""
GLYPH_FILL = 7 / 8
"""Share of the square frame that a glyph's longer side spans (7 of the 8 pixels)."""
GLYPH_IMAGE_SIZE = 8
"""Side of the letters' images, the digits' 8 pixels."""
TEXT_HELD_OUT_FRACTIONS = {"valid": 0.1, "test": 0.1}
TEXT_BLOCK_BYTES = 2048
TFDS_VALID_FRACTION = 1 / 12
"""Of a tensorflow-datasets image dataset's ``train`` split (FashionMNIST: 5,000 of 60,000)."""


class DatasetNotPreparedError(FileNotFoundError):
    """A tensorflow-datasets dataset is not available in array_record form."""


def prepare_instructions(name: str, data_dir: str | None) -> str:
    """How to prepare ``name`` on a connected machine so this package can read it."""
    target = data_dir or "~/tensorflow_datasets"
    return (
        f"Prepare it once on a machine with internet access (TensorFlow is needed to "
        f"prepare, not to read):\n"
        f"    pip install tensorflow tensorflow-datasets importlib_resources\n"
        f"    python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{target}', file_format='array_record').download_and_prepare()\"\n"
        f"or: tfds build {name} --file_format=array_record --data_dir={target}\n"
        f"then copy {target}/{name} to this machine and pass data_dir=... (or set "
        f"TFDS_DATA_DIR). importlib_resources is needed by tensorflow-datasets 4.9.x for "
        f"preparing on Python >= 3.9 but is not pulled in by it."
    )


def first_occurrences(images: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of every distinct example, in their original order.

    Args:
        images: ``(N, ...)`` examples, compared by content.

    Returns:
        ``(M,)`` sorted indices, ``M <= N``.
    """
    rows = np.ascontiguousarray(images.reshape(images.shape[0], -1))
    _, first = np.unique(rows, axis=0, return_index=True)
    return np.sort(first)


def split_indices(order: np.ndarray, held_out: dict[str, int]) -> dict[str, np.ndarray]:
    """Cuts a shuffled index array into held-out splits (in ``held_out``'s order) and
    ``train`` (the rest)."""
    splits, start = {}, 0
    for name, count in held_out.items():
        splits[name] = order[start : start + count]
        start += count
    if start >= len(order):
        raise ValueError(f"held-out splits of {start} examples leave none of {len(order)} to train")
    splits["train"] = order[start:]
    return {name: splits[name] for name in SPLIT_NAMES}


@functools.cache
def digits_images() -> Splits:
    """scikit-learn's 8x8 digits: ``images`` uint8 (N, 8, 8, 1) in 0..16, ``labels`` int32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    distinct = first_occurrences(images)
    order = distinct[np.random.default_rng(0).permutation(len(distinct))]
    return {
        name: {"images": images[index], "labels": labels[index]}
        for name, index in split_indices(order, DIGITS_HELD_OUT).items()
    }


def matplotlib_fonts() -> list[Path]:
    """The TrueType fonts that matplotlib ships, sorted by file name."""
    import matplotlib

    return sorted(Path(matplotlib.get_data_path(), "fonts", "ttf").glob("*.ttf"))


def has_glyphs(font: Path, characters: str) -> bool:
    """Whether ``font`` maps every character to a glyph named as that character.

    A symbol font (``cmex10``, or ``cmsy10``'s lower case) maps the letters' codes to glyphs
    of other shapes; a glyph's PostScript name tells them apart.
    """
    from matplotlib import ft2font

    face = ft2font.FT2Font(str(font))
    charmap = face.get_charmap()
    return all(
        ord(char) in charmap and face.get_glyph_name(charmap[ord(char)]) == char
        for char in characters
    )


def framed_glyph(ink: np.ndarray, fill: float = GLYPH_FILL) -> np.ndarray:
    """A glyph's ink centred on a square frame, its longer side spanning ``fill`` of it.

    Args:
        ink: ``(H, W)`` uint8, cropped to the glyph's ink.
        fill: share of the frame's side taken by ``max(H, W)``.

    Returns:
        ``(S, S)`` uint8 with ``S = ceil(max(H, W) / fill)``.
    """
    height, width = ink.shape
    side = math.ceil(max(height, width) / fill)
    frame = np.zeros((side, side), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    frame[top : top + height, left : left + width] = ink
    return frame


def glyph_ink(font: Path, char: str, render_size: int = GLYPH_RENDER_SIZE) -> np.ndarray:
    """One character of ``font`` rendered by Pillow at ``render_size`` pixels.

    Returns:
        ``(H, W)`` uint8 coverage cropped to the ink; ``(0, 0)`` if nothing is drawn.
    """
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(font), render_size)
    left, top, right, bottom = face.getbbox(char)
    # A margin, since the layout box can clip anti-aliased edges of slanted glyphs.
    margin = render_size // 8
    canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin))
    ImageDraw.Draw(canvas).text((margin - left, margin - top), char, fill=255, font=face)
    box = canvas.getbbox()
    return np.asarray(canvas.crop(box)) if box else np.zeros((0, 0), np.uint8)


def render_glyphs(font: Path, characters: str, size: int = GLYPH_IMAGE_SIZE) -> np.ndarray:
    """``characters`` of ``font``, each framed (:func:`framed_glyph`) and area-averaged.

    Returns:
        ``(len(characters), size, size, 1)`` uint8 in 0..255; a character that draws no ink
        is all zeros.
    """
    images = np.zeros((len(characters), size, size, 1), np.uint8)
    for index, char in enumerate(characters):
        ink = glyph_ink(font, char)
        if ink.size:
            images[index] = area_resize(framed_glyph(ink)[None, :, :, None], size)[0]
    return images


def is_new_and_distinct(images: np.ndarray, seen: set[bytes]) -> bool:
    """Whether no image is blank, no two are equal and none is in ``seen``.

    Args:
        images: ``(N, H, W, C)`` uint8, compared by content.
        seen: ``image.tobytes()`` of images kept before.
    """
    contents = {image.tobytes() for image in images}
    blank = (images.reshape(len(images), -1).max(axis=1) == 0).any()
    # A fallback font may draw one placeholder box for every character.
    return not blank and len(contents) == len(images) and not contents & seen


@functools.cache
def letter_glyphs() -> dict[str, np.ndarray]:
    """The usable fonts' renderings of the letters (see the module docstring).

    Returns:
        ``{font file stem: uint8 (20, 8, 8, 1)}`` in sorted font order: the glyphs of
        ``A..J`` then of ``a..j``; every image is non-blank and distinct from every other.
    """
    characters = LETTERS.upper() + LETTERS.lower()
    glyphs: dict[str, np.ndarray] = {}
    seen: set[bytes] = set()
    for font in matplotlib_fonts():
        if not has_glyphs(font, characters):
            continue
        images = render_glyphs(font, characters)
        if is_new_and_distinct(images, seen):
            seen |= {image.tobytes() for image in images}
            glyphs[font.stem] = images
    return glyphs


def letter_fonts() -> dict[str, tuple[str, ...]]:
    """The fonts of each split of the letters: ``{split: font file stems, sorted}``."""
    names = sorted(letter_glyphs())
    order = np.random.default_rng(0).permutation(len(names))
    cut = split_indices(order, LETTERS_HELD_OUT_FONTS)
    return {split: tuple(sorted(names[i] for i in index)) for split, index in cut.items()}


@functools.cache
def letters_images() -> Splits:
    """Letters A..J from matplotlib's fonts: ``images`` uint8 (N, 8, 8, 1) in 0..255,
    ``labels`` int32 (N,) in 0..9; each split 20 images (upper and lower case) per font."""
    glyphs = letter_glyphs()
    labels = np.tile(np.arange(len(LETTERS), dtype=np.int32), 2)
    return {
        split: {
            "images": np.concatenate([glyphs[font] for font in fonts]),
            "labels": np.tile(labels, len(fonts)),
        }
        for split, fonts in letter_fonts().items()
    }


def text_blocks(paragraphs: list[str], block_bytes: int) -> list[list[str]]:
    """Consecutive paragraphs grouped into blocks of at least ``block_bytes`` UTF-8 bytes
    (the last block may be shorter)."""
    blocks: list[list[str]] = [[]]
    size = 0
    for paragraph in paragraphs:
        blocks[-1].append(paragraph)
        size += len(paragraph.encode("utf-8")) + 2
        if size >= block_bytes:
            blocks.append([])
            size = 0
    return [block for block in blocks if block]


def split_text(
    text: str, held_out: dict[str, float], block_bytes: int = TEXT_BLOCK_BYTES, seed: int = 0
) -> dict[str, list[str]]:
    """Splits a text into distinct paragraphs per split (see the module docstring).

    Args:
        text: the corpus; paragraphs are separated by blank lines.
        held_out: ``{split: fraction of the bytes}`` of the held-out splits.
        block_bytes: approximate bytes of a block of consecutive paragraphs.
        seed: the blocks' shuffle.

    Returns:
        ``{split: paragraphs}`` for every split of :data:`SPLIT_NAMES`, each in corpus order;
        no paragraph appears twice.
    """
    seen: set[str] = set()
    paragraphs = []
    for paragraph in text.split("\n\n"):
        if paragraph.strip() and paragraph not in seen:
            seen.add(paragraph)
            paragraphs.append(paragraph)
    blocks = text_blocks(paragraphs, block_bytes)
    sizes = np.array([sum(len(p.encode("utf-8")) + 2 for p in block) for block in blocks])
    order = np.random.default_rng(seed).permutation(len(blocks))
    owner = np.full(len(blocks), "train", dtype=object)
    start, total = 0, sizes.sum()
    for name, fraction in held_out.items():
        taken = np.cumsum(sizes[order[start:]]) <= fraction * total
        count = max(1, int(taken.sum()))
        owner[order[start : start + count]] = name
        start += count
    return {
        name: [p for block, who in zip(blocks, owner, strict=True) if who == name for p in block]
        for name in SPLIT_NAMES
    }


@functools.cache
def pydoc_text() -> Splits:
    """CPython's pydoc topic texts as UTF-8 byte streams: ``tokens`` uint8 (N,) per split."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    splits = split_text(text, TEXT_HELD_OUT_FRACTIONS)
    encode = lambda paragraphs: np.frombuffer(
        "\n\n".join(paragraphs).encode("utf-8"), dtype=np.uint8
    ).copy()
    return {name: {"tokens": encode(paragraphs)} for name, paragraphs in splits.items()}


def _area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix averaging each target cell's footprint on the source axis."""
    edges = np.arange(target + 1) * (source / target)
    left, right = edges[:-1, None], edges[1:, None]
    cells = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(right, cells + 1) - np.maximum(left, cells), 0.0, None)
    return overlap / (source / target)


def area_resize(images: np.ndarray, size: int, chunk: int = 8192) -> np.ndarray:
    """Downsamples ``(N, H, W, C)`` uint8 images to ``(N, size, size, C)`` by area averaging.

    Each output pixel is the mean of the source area it covers (fractional pixels weighted
    by overlap), which is exact average pooling when ``H / size`` is an integer
    (CIFAR 32 -> 16) and the standard "area" resampling otherwise (FashionMNIST 28 -> 8).
    """
    if images.ndim != 4:
        raise ValueError(f"area_resize needs (N, H, W, C) images, got shape {images.shape}")
    rows = _area_weights(images.shape[1], size).astype(np.float32)
    cols = _area_weights(images.shape[2], size).astype(np.float32)
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].astype(np.float32)
        resized = np.einsum("ih,nhwc,jw->nijc", rows, block, cols, optimize=True)
        out[start : start + chunk] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def _data_source(name: str, split: str, data_dir: str | None) -> Any:
    """Opens a prepared tfds split for random access, or raises one clear error."""
    import tensorflow_datasets as tfds

    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # unknown name and nothing prepared under data_dir
        # tfds' message lists every dataset it knows (~260 lines); its first line suffices.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset {name!r} was not found in {where}: {reason}\n"
            + prepare_instructions(name, data_dir)
        ) from err
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset {name!r} is not prepared in {where}.\n"
            + prepare_instructions(name, data_dir)
        )
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format not in ("array_record", "parquet"):
        raise DatasetNotPreparedError(
            f"tensorflow-datasets dataset {name!r} in {where} is stored as {file_format}, "
            "which cannot be read without TensorFlow; prepare it again as array_record.\n"
            + prepare_instructions(name, data_dir)
        )
    if split not in builder.info.splits:
        raise ValueError(f"dataset {name!r} has splits {list(builder.info.splits)}, not {split!r}")
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def _read_all(source: Any, chunk: int = 4096) -> list[Any]:
    records: list[Any] = []
    for start in range(0, len(source), chunk):
        records.extend(source.__getitems__(list(range(start, min(start + chunk, len(source))))))
    return records


@functools.lru_cache(maxsize=8)
def tfds_images(name: str, data_dir: str | None, image_size: int) -> Splits:
    """Image classification data from tfds (features ``image``, ``label``), area-resized.

    Returns:
        ``{"train"|"valid"|"test": {"images": uint8 (N, s, s, C), "labels": int32 (N,)}}``;
        ``valid`` is carved from the dataset's ``train`` split (module docstring).
    """
    loaded: Splits = {}
    for split in ("train", "test"):
        records = _read_all(_data_source(name, split, data_dir))
        if not records or "image" not in records[0] or "label" not in records[0]:
            raise ValueError(f"dataset {name!r} needs features 'image' and 'label'")
        images = np.stack([np.asarray(r["image"], dtype=np.uint8) for r in records])
        if images.ndim == 3:
            images = images[..., None]
        labels = np.asarray([r["label"] for r in records], dtype=np.int32)
        if images.shape[1:3] != (image_size, image_size):
            images = area_resize(images, image_size)
        loaded[split] = {"images": images, "labels": labels}
    train = loaded["train"]
    count = len(train["labels"])
    order = np.random.default_rng(0).permutation(count)
    valid_count = max(1, round(count * TFDS_VALID_FRACTION))
    cut = split_indices(order, {"valid": valid_count, "test": 0})
    return {
        "train": {key: value[cut["train"]] for key, value in train.items()},
        "valid": {key: value[cut["valid"]] for key, value in train.items()},
        "test": loaded["test"],
    }


def _read_text(source: Any, budget: int, chunk: int) -> bytes:
    """The first ``budget`` bytes of ``source``'s sentences joined by newlines."""
    pieces: list[bytes] = []
    total = 0
    for start in range(0, len(source), chunk):
        batch = source.__getitems__(list(range(start, min(start + chunk, len(source)))))
        for record in batch:
            text = record["text"]
            piece = (text.encode("utf-8") if isinstance(text, str) else bytes(text)) + b"\n"
            pieces.append(piece)
            total += len(piece)
        if total >= budget:
            break
    return b"".join(pieces)[:budget]


@functools.lru_cache(maxsize=8)
def tfds_text(
    name: str,
    data_dir: str | None,
    max_train_bytes: int,
    max_valid_bytes: int,
    max_test_bytes: int,
    chunk: int = 4096,
) -> Splits:
    """Byte-level text from tfds (feature ``text``): sentences joined by newlines.

    Reads sentences in stored order until the split's byte budget is reached; ``valid`` is
    the ``max_valid_bytes`` that follow ``train`` in the dataset's training stream.

    Returns:
        ``{"train"|"valid"|"test": {"tokens": uint8 (N,)}}`` with ``N <= budget``.
    """
    train_source = _data_source(name, "train", data_dir)
    train = _read_text(train_source, max_train_bytes + max_valid_bytes, chunk)
    test = _read_text(_data_source(name, "test", data_dir), max_test_bytes, chunk)
    as_tokens = lambda stream: {"tokens": np.frombuffer(stream, dtype=np.uint8).copy()}
    return {
        "train": as_tokens(train[:max_train_bytes]),
        "valid": as_tokens(train[max_train_bytes:]),
        "test": as_tokens(test),
    }
