"""Hostile and broken input: one run over a generated folder of odd files reports every bad one with its reason,
sorts every real photo, and leaves INPUT exactly as it was.

The corpus is generated, nothing is committed: coloured photos in the formats and modes cameras, phones and
editors write, broken and fake files, decompression bombs, awkward names, links, unreadable entries, and files that
vanish or change between the listing and the reading. Tests run as root here, and root ignores permission bits, so
the run is made with the effective uid of `nobody`: an unreadable file is then really unreadable.
"""
import csv
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, make_photo, permission_bits_enforced, tree_digest
from PIL import Image

import sorter.sorting
from sorter.discover import walk_photos
from sorter.images import HEIF_SUPPORTED, MAX_PIXELS, ImageError, load_image
from sorter.placement import TMP_PREFIX
from sorter.report import display_path, safe_cell

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
ORIENTATION = 0x0112  # the EXIF tag


def png_file(path, width, height, bit_depth, colour_type, idat):
    """A PNG from its raw parts: what Pillow will not write (16-bit colour, a 40000x40000 canvas)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return Path(path)


def bomb(path, width, height, rows_per_block=400):
    """A valid all-black grayscale PNG of width x height, built in a blink from one repeated block: 40000x40000
    pixels (1.6 GB decoded) take 1.5 MB. Each block is flushed in full, so identical blocks compress alike."""
    block = bytes((width + 1) * rows_per_block)  # each row: filter byte 0, then black pixels
    c = zlib.compressobj()
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()[:-4]  # the final empty block, without the checksum of just two blocks
    size = (width + 1) * height
    adler = (size % 65521) << 16 | 1  # adler32 of `size` zero bytes: A stays 1, B grows by 1 a byte
    idat = first + again * (height // rows_per_block - 1) + end + struct.pack(">I", adler)
    return png_file(path, width, height, 8, 0, idat)


def rgb16_png(path, label, size=(64, 48)):
    """A 16-bit RGB PNG in the label's colour (Pillow reads these but cannot write them)."""
    pixels = np.tile(np.array(COLOURS[label], ">u2") * 257, (size[1], size[0], 1))
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return png_file(path, size[0], size[1], 16, 2, zlib.compress(raw))


def palette_png(path, label):
    """A palette PNG with a transparent corner."""
    image = Image.new("P", (64, 48), 1)
    image.putpalette([0, 0, 0] + list(COLOURS[label]))
    image.paste(0, (0, 0, 16, 12))
    image.save(path, transparency=0)
    return path


def exif(orientation):
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags.tobytes()


def stored_as(upright, orientation):
    """How a camera stores an upright picture under EXIF orientation 1-8, from the specification's table (which
    side is row 0, which is column 0), not from Pillow's: the decoder is checked against it."""
    a = np.asarray(upright)
    return Image.fromarray(np.ascontiguousarray({
        1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.transpose(1, 0, 2),
        6: np.rot90(a, 1), 7: np.rot90(a, 1)[:, ::-1], 8: np.rot90(a, -1)}[orientation]))


def marked_photo(size=(192, 128)):
    """Blue, with a red block in the top-left corner and a green one in the top-right: upright only one way."""
    image = Image.new("RGB", size, (0, 0, 255))
    width, height = size
    image.paste((255, 0, 0), (0, 0, width // 3, height // 3))
    image.paste((0, 255, 0), (width - width // 3, 0, width, height // 3))
    return image


def dominant(image, x, y):
    return "rgb"[int(np.argmax(image.getpixel((x, y))))]


def animation(path, labels, scratch, **save_args):
    frames = [Image.open(make_photo(scratch / f"frame{i}.png", label, seed=i)).convert("RGB")
              for i, label in enumerate(labels)]
    frames[0].save(path, save_all=True, append_images=frames[1:], **save_args)
    return path


def beyond_path_max(root):
    """A photo nested deeper than PATH_MAX allows a path to be: made with dir_fd, one level at a time.
    Returns the name of the first entry the walk cannot look at."""
    name, rel, fd = "x" * 250, "toolong", os.open(root, os.O_RDONLY)
    os.mkdir("toolong", dir_fd=fd)
    first_too_long = None
    try:
        fd = _descend(fd, "toolong")
        while len(os.fsencode(str(root / rel))) < PATH_MAX + 300:
            os.mkdir(name, dir_fd=fd)
            fd = _descend(fd, name)
            rel += "/" + name
            if first_too_long is None and len(os.fsencode(str(root / rel))) >= PATH_MAX:
                first_too_long = rel
        photo = os.open("photo.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(photo, b"\xff\xd8\xff")
        os.close(photo)
    finally:
        os.close(fd)
    return first_too_long


def _descend(fd, name):
    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    return child


class Corpus:
    """INPUT with every odd case, and what a run must say about each: (status, label or reason fragment)."""

    def __init__(self, base):
        self.root = base / "in"
        self.scratch = base / "scratch"  # frames, link targets: outside INPUT
        self.scratch.mkdir(parents=True)
        self.expected = {}
        self.unreadable = []
        self.race = self.root / "race"

    def sorted(self, rel, label):
        """`label` None: a photo without a label colour (grayscale): only its being sorted is checked."""
        self.expected[rel] = ("sorted", label)

    def error(self, rel, reason):
        self.expected[rel] = ("error", reason)

    def skipped(self, rel, reason):
        self.expected[rel] = ("skipped", reason)

    def photo(self, rel, label, seed=0, **kwargs):
        make_photo(self.root / rel, label, seed=seed, **kwargs)
        self.sorted(rel, label)

    def build(self):
        self.formats()
        self.broken()
        self.names()
        self.links()
        self.error(beyond_path_max(self.root), "File name too long")
        os.mkfifo(self.root / "pipe.jpg")
        self.error("pipe.jpg", "not a regular file")
        return self

    def formats(self):
        root = self.root
        self.photo("plain.jpg", "male")
        self.photo("jpeg named.png", "female", fmt="JPEG")
        self.sorted("palette transparent.png", "neither")
        palette_png(root / "palette transparent.png", "neither")
        self.sorted("rgb16.png", "female")
        rgb16_png(root / "rgb16.png", "female")
        gradient = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
        Image.fromarray(gradient).save(root / "gray16.png")
        Image.fromarray((gradient >> 8).astype(np.uint8)).save(root / "gray8.png")
        self.sorted("gray16.png", None)
        self.sorted("gray8.png", None)
        Image.open(make_photo(self.scratch / "cmyk.png", "male", seed=3)).convert("CMYK").save(root / "cmyk.jpg")
        self.sorted("cmyk.jpg", "male")
        animation(root / "animated.gif", ["female", "male", "neither"], self.scratch)
        self.sorted("animated.gif", "female")
        animation(root / "animated.webp", ["male", "female"], self.scratch, lossless=True)
        self.sorted("animated.webp", "male")
        self.photo("scan.tiff", "neither", seed=4)
        for orientation in range(2, 9):
            self.photo(f"rotated/orientation-{orientation}.jpg", "female", seed=orientation, exif=exif(orientation))
        if HEIF_SUPPORTED:
            self.photo("phone.heic", "male", seed=5)
        else:
            (root / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
            self.error("phone.heic", "unsupported")

    def broken(self):
        root = self.root
        whole = make_photo(self.scratch / "whole.jpg", "male").read_bytes()
        (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
        self.error("truncated.jpg", "truncated")
        (root / "empty.jpg").write_bytes(b"")
        self.error("empty.jpg", "empty file")
        (root / "random.jpg").write_bytes(random.Random(5).randbytes(4096))
        self.error("random.jpg", "matches no image format")
        (root / "text.png").write_text("this is not a photo\n")
        self.error("text.png", "holds text")
        bomb(root / "bomb.png", 40000, 40000)
        self.error("bomb.png", "too large")
        bomb(root / "just too big.png", 12000, 10000)  # over facesort's limit, under Pillow's own
        self.error("just too big.png", "12000x10000 pixels")
        self.unreadable.append(make_photo(root / "unreadable.jpg", "male"))
        self.error("unreadable.jpg", "permission denied")
        self.unreadable.append(make_photo(root / "locked" / "inside.jpg", "male").parent)
        self.error("locked/", "cannot list folder: Permission denied")
        self.tamper()  # INPUT as it must be after the run: see arm()
        self.error("race/vanishes.jpg", "vanished")
        self.error("race/changes.jpg", "changed")

    def names(self):
        names = ["with space.jpg", 'quote".jpg', "it's.jpg", "comma,name.jpg", "new\nline.jpg",
                 os.fsdecode(b"caf\xe9.jpg"), "=cmd|' /C calc'!A0.jpg", "+1.jpg", "-2.jpg", "@SUM(1).jpg",
                 "n" * 251 + ".jpg", "/".join(["d" * 200] * 6) + "/deep.jpg"]
        for i, name in enumerate(names):
            self.photo(f"names/{name}", list(COLOURS)[i % 3], seed=10 + i)

    def links(self):
        root = self.root
        outside = make_photo(self.scratch / "outside.jpg", "male")
        (root / "link to outside.jpg").symlink_to(outside)
        (root / "link to folder").symlink_to("names")
        (root / "loop").symlink_to("loop")
        (root / "broken.jpg").symlink_to("nowhere.jpg")
        for rel in ("link to outside.jpg", "link to folder", "loop", "broken.jpg"):
            self.skipped(rel, "symbolic link (not followed without --follow-links)")
        os.link(root / "plain.jpg", root / "plain.jpg (hard link).jpg")  # listed after plain.jpg
        self.skipped("plain.jpg (hard link).jpg", "same file as plain.jpg")

    def arm(self):
        """The files another program will change between facesort's listing and its reading (tamper)."""
        make_photo(self.race / "vanishes.jpg", "male")
        make_photo(self.race / "changes.jpg", "female")

    def tamper(self):
        (self.race / "vanishes.jpg").unlink(missing_ok=True)
        make_photo(self.race / "changes.jpg", "male", size=(80, 60))


def read_report(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def temporary_files(out):
    return [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX) or ".tmp" in p.name]


def test_one_run_over_the_hostile_corpus(cli, colour_model, tmp_path, monkeypatch):
    corpus = Corpus(tmp_path).build()
    before = tree_digest(corpus.root)
    corpus.arm()
    out = tmp_path / "out"
    monkeypatch.setattr(sorter.sorting, "walk_photos", listing_then(corpus.tamper))
    for path in corpus.unreadable:
        path.chmod(0)
    try:
        with permission_bits_enforced():
            result = cli("run", corpus.root, "--out", out, "--model", colour_model, "--whole-image",
                         "--report", out / "run.csv")
    finally:
        for path in corpus.unreadable:
            path.chmod(0o755)
    assert result.exit_code == 3, result.output
    rows = read_report(out / "run.csv")
    expected = {safe_cell(display_path(rel)): (rel, *outcome) for rel, outcome in corpus.expected.items()}
    assert sorted(rows) == sorted(expected)
    wrong = {rel: {k: v for k, v in rows[key].items() if v} for key, (rel, *outcome) in expected.items()
             if not outcome_matches(rows[key], *outcome)}
    assert wrong == {}
    for key, (rel, status, _) in expected.items():
        for folder in rows[key]["destinations"].split(";") if status == "sorted" else []:
            assert (out / folder / rel).read_bytes() == (corpus.root / rel).read_bytes(), rel
    assert temporary_files(out) == []
    assert tree_digest(corpus.root) == before


def outcome_matches(row, status, detail):
    """`detail`: the label a sorted photo must get (None: any), or a fragment of the reason for the others."""
    if row["status"] != status:
        return False
    return detail is None or (row["labels"] == detail if status == "sorted" else detail in row["error"])


def listing_then(tamper):
    """walk_photos, with `tamper` done once the listing is complete and before any file is read."""
    def walk(*args, **kwargs):
        listed = list(walk_photos(*args, **kwargs))
        tamper()
        yield from listed
    return walk


def test_links_are_followed_when_asked_each_real_file_once(cli, colour_model, tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    make_photo(root / "real" / "a.jpg", "male")
    outside = make_photo(tmp_path / "elsewhere" / "b.jpg", "female")
    for name, target in [("a copy.jpg", "real/a.jpg"), ("again", "real"), ("broken.jpg", "nowhere.jpg"),
                         ("link to outside.jpg", outside), ("loop", "loop"), ("to out", out)]:
        (root / name).symlink_to(target)
    out.mkdir()  # "to out" is then a link to a folder before the run as after it, for tree_digest
    before = tree_digest(root)
    result = cli("run", root, "--out", out, "--model", colour_model, "--whole-image", "--follow-links",
                 "--report", tmp_path / "run.csv")
    assert result.exit_code == 3, result.output
    rows = {path: (row["status"], row["labels"] or row["error"]) for path, row in read_report(tmp_path / "run.csv").items()}
    assert rows == {
        "real/a.jpg": ("sorted", "male"),
        "link to outside.jpg": ("sorted", "female"),
        "a copy.jpg": ("skipped", "same file as real/a.jpg (sorted once)"),
        "again": ("skipped", "link to a folder already walked as real"),
        "broken.jpg": ("error", "broken symbolic link: its target does not exist"),
        "loop": ("error", "symbolic link loop"),
    }
    assert (out / "female" / "link to outside.jpg").read_bytes() == outside.read_bytes()
    assert not (out / "female" / "link to outside.jpg").is_symlink()
    assert tree_digest(root) == before


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("min_side", [None, 32], ids=["full", "draft"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_undone(tmp_path, orientation, min_side, suffix):
    path = tmp_path / f"photo{suffix}"
    stored_as(marked_photo((192, 128)), orientation).save(path, exif=exif(orientation), quality=95)
    image = load_image(path, min_side)
    scale = 4 if min_side else 1  # JPEG draft decodes at 1/4 (the shorter side 128 -> 32), a PNG is reduced as much
    assert image.size == (192 // scale, 128 // scale) and image.mode == "RGB"
    assert image.info["full_size"] == (192, 128)  # the upright photo's own size, whatever was decoded
    width, height = image.size
    assert dominant(image, width // 10, height // 10) == "r"  # red block top-left
    assert dominant(image, width - width // 10, height // 10) == "g"  # green block top-right
    assert dominant(image, width // 2, height - height // 10) == "b"


def test_odd_modes_decode_to_their_colours(tmp_path):
    assert load_image(rgb16_png(tmp_path / "rgb16.png", "female")).getpixel((5, 5)) == COLOURS["female"]
    gradient = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "gray16.png")
    gray = load_image(tmp_path / "gray16.png")
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (0, 0, 0) and gray.getpixel((63, 47)) == (255,) * 3
    assert 120 < gray.getpixel((0, 24))[0] < 135  # scaled to 8 bits, not clipped to white
    palette = load_image(palette_png(tmp_path / "palette.png", "male"))
    assert palette.getpixel((2, 2)) == (255, 255, 255) and palette.getpixel((40, 30)) == COLOURS["male"]
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert dominant(load_image(tmp_path / "cmyk.jpg"), 16, 16) == "r"
    animation(tmp_path / "a.gif", ["male", "female"], tmp_path)
    animation(tmp_path / "a.webp", ["female", "male"], tmp_path, lossless=True)
    assert dominant(load_image(tmp_path / "a.gif"), 2, 2) == "b"  # the first frame, not the last
    assert dominant(load_image(tmp_path / "a.webp"), 2, 2) == "r"


def test_heic_decodes_or_is_reported_unsupported(tmp_path, monkeypatch):
    import sorter.images

    if HEIF_SUPPORTED:
        assert dominant(load_image(make_photo(tmp_path / "phone.heic", "female")), 5, 5) == "r"
    heic = tmp_path / "other.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    monkeypatch.setattr(sorter.images, "HEIF_SUPPORTED", False)
    with pytest.raises(ImageError, match="unsupported here"):
        load_image(heic)


def test_a_decompression_bomb_is_refused_without_using_its_memory(tmp_path):
    """Decoding 40000x40000 pixels needs 1.6 GB: under a 1 GB address-space limit, only a refusal can succeed."""
    path = bomb(tmp_path / "bomb.png", 40000, 40000)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from sorter.images import ImageError, load_image\n"
            "try:\n    load_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"over {MAX_PIXELS:,} pixels" in result.stdout


def test_a_decoder_failing_in_an_unforeseen_way_means_a_bad_file(tmp_path, monkeypatch):
    """A decoder bug on a malformed file must not escape load_image: in a run it would stop every other photo."""
    def broken_decoder(*args, **kwargs):
        raise IndexError("tile index out of range")

    monkeypatch.setattr(Image, "open", broken_decoder)
    with pytest.raises(ImageError, match="corrupt image: IndexError: tile index out of range"):
        load_image(make_photo(tmp_path / "a.jpg", "male"))
