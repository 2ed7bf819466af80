"""Finding photos by their content and decoding them safely, small and upright.

Decoding is where bad input shows up, so every failure becomes an `ImageError` with a reason a person can act on.
"""
import contextlib
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

try:  # phones write HEIC; without pillow-heif those files are reported as unsupported
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:
    HEIF_SUPPORTED = False

MAX_PIXELS = 100_000_000  # 100 MP: well above any camera's photo, far below a decompression bomb
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow refuses images over twice this itself, before decoding
warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the rest are refused by _check_size, by size

# First bytes of the formats we sort; content decides, never the extension.
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
ORIENTATION = 0x0112  # the EXIF tag; _UPRIGHT: the transpose that undoes each value, as ImageOps.exif_transpose
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_TURNED = (5, 6, 7, 8)  # the orientations whose upright photo swaps width and height
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif",
                  ".avif"}


class ImageError(Exception):
    """A file that is not a usable photo; the message is the reason written in the report."""


def sniff_format(head):
    """The image format named by a file's first bytes, or None when they are not an image we read."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def looks_like_image(path):
    """True when `path` is worth trying to decode: an image name (so a broken one is reported), or image content."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with _open_regular(path) as f:
            head = f.read(16)
    except (OSError, ImageError):  # unreadable, gone or special: decoding it will report exactly why
        return True
    return sniff_format(head) is not None


def load_image(source, min_side=None, device="cpu"):
    """Decode the first frame of `source` (a path, or a binary file object such as an upload held in memory) as
    an upright RGB image.

    With `min_side`, a JPEG is decoded at the smallest scale (1/2 to 1/8) whose shorter side is still at least
    `min_side` pixels: much faster than a full decode when the model only needs a thumbnail; other formats are
    decoded whole, then shrunk by the same factor. The image's
    `info["full_size"]` is then the upright photo's own (width, height), the frame users measure in. With
    `device` "cuda" a JPEG is decoded on the GPU (nvJPEG) and scaled there to the same size; whatever the GPU
    cannot decode goes the CPU's way, so a bad file fails with the same reason.
    """
    try:
        with _opened(source) as f:
            head = f.read(512)
            if not head:
                raise ImageError("empty file (0 bytes)")
            fmt = sniff_format(head)
            if fmt is None:
                raise ImageError(_not_an_image_reason(head))
            if fmt == "heif" and not HEIF_SUPPORTED:
                raise ImageError("HEIC/HEIF photo: unsupported here (pip install pillow-heif)")
            f.seek(0)
            with Image.open(f) as im:
                _check_size(im)
                full_size = im.size
                gpu = _gpu_jpeg(f, im, min_side) if device == "cuda" and im.format == "JPEG" else None
                if gpu is not None:
                    return gpu
                if min_side and im.format == "JPEG":
                    im.draft("RGB", _draft_size(im.size, min_side))
                im.seek(0)
                decoded = im.size
                ImageOps.exif_transpose(im, in_place=True)
                image = _to_rgb(im)
                image.info["full_size"] = full_size if image.size == decoded else full_size[::-1]  # turned upright
                return _reduced(image, min_side) if im.format != "JPEG" else image
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageError("permission denied: cannot read the file") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image too large: over {MAX_PIXELS:,} pixels (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image: the content matches no image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"corrupt or truncated image: {e}") from None
    except Exception as e:  # decoders meet malformed files in many ways (struct.error, IndexError...): all are bad files
        raise ImageError(f"corrupt image: {type(e).__name__}: {e}") from None


def _opened(source):
    """The file to read: a path is opened (and closed after); a file object is used as it is."""
    return contextlib.nullcontext(source) if hasattr(source, "read") else _open_regular(source)


def _open_regular(path):
    """Open a path for reading only if it is a regular file: a FIFO swapped in after listing must not block us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError("not a regular file (a folder, device, pipe or socket)")
    return os.fdopen(fd, "rb")


def _check_size(im):
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels is over {MAX_PIXELS:,} (possible decompression bomb)")
    if width == 0 or height == 0:
        raise ImageError("image has no pixels")


def _draft_size(size, min_side):
    """The size to ask draft() for: draft picks the smallest scale at least this big."""
    width, height = size
    scale = min_side / min(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _gpu_jpeg(f, im, min_side):
    """The JPEG in `f` decoded on the GPU, upright, at draft()'s size; None when the GPU cannot (CMYK, a corrupt
    file, no CUDA): the caller then decodes on the CPU."""
    f.seek(0)
    data = f.read()
    orientation = im.getexif().get(ORIENTATION, 1)
    try:
        image = decode_jpeg_on(data, orientation, _draft_factor(im.size, min_side), "cuda")
    except Exception:  # nvJPEG refuses some valid files; the CPU path decides what is wrong with the others
        return None
    image.info["full_size"] = im.size[::-1] if orientation in _TURNED else im.size
    return image


def decode_jpeg_on(data, orientation, factor, device):
    """Decode JPEG bytes on `device` with torchvision, shrunk `factor` times (antialiased) and turned upright."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                         device=device)
    if factor > 1:
        size = [-(-side // factor) for side in pixels.shape[1:]]  # rounded up, as libjpeg's scaled sizes are
        pixels = torch.nn.functional.interpolate(pixels[None].float(), size=size, mode="bilinear", antialias=True)
        pixels = pixels[0].round().clamp(0, 255).to(torch.uint8)
    image = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def _draft_factor(size, min_side):
    """The power of two (1 to 8) that draft() shrinks a JPEG of `size` by to keep `min_side` on its short side."""
    if not min_side:
        return 1
    most = min(side // wanted for side, wanted in zip(size, _draft_size(size, min_side)))
    return next(f for f in (8, 4, 2, 1) if most >= f or f == 1)


def _reduced(image, min_side):
    """A PNG, WebP or TIFF shrunk by draft()'s rule for JPEGs (a box filter, at least `min_side` kept), so a large
    screenshot costs the later stages what a JPEG of its size does."""
    factor = _draft_factor(image.size, min_side)
    return image.reduce(factor) if factor > 1 else image


def _to_rgb(im):
    """RGB for every mode: transparency goes on white, 16-bit images are scaled to 8 bits (not clipped). An RGB
    image is returned as it is, loaded, not copied."""
    if im.mode == "RGB":
        im.load()
        return im
    if im.mode.startswith("I"):  # I;16* and I: 16-bit samples (PNG, TIFF)
        im = im.point(lambda v: v / 256).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode in ("PA", "LA", "RGBA", "La", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    rgb = im.convert("RGB")
    rgb.load()
    return rgb


def _not_an_image_reason(head):
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not an image: the file holds text"
    return "not an image: the content matches no image format"
