"""File digests, in a module of their own so that hashing a photo or a model never imports torch or fastai."""
import contextlib
import hashlib


def sha256_of(source):
    """Hex sha256 of a file, read in chunks: a path, or an open binary file (read from where it stands)."""
    digest = hashlib.sha256()
    with contextlib.nullcontext(source) if hasattr(source, "read") else open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
