"""Small JPEG thumbnails made on request, with the faces boxed in face-aware mode, kept in a bounded memory cache.

A review of 10,000 images is paged through, never loaded whole: each thumbnail is made when the page first asks
for it (a JPEG decoded at reduced scale), and only the most recently used ones stay in memory.
"""
import io
import threading
from collections import OrderedDict

from PIL import ImageDraw

from .images import load_image

SIDE = 176  # pixels, the longer side of a thumbnail
CACHE_SIZE = 2048  # thumbnails kept, about 6 KB each
DETECT_MIN_SIDE = 320  # the image is decoded this big when its faces are to be found, as face detection sees it


class Thumbnails:
    """Thumbnails by key, made by `make(path)` on a miss; `finder` (a FaceFinder) boxes the faces it finds."""

    def __init__(self, finder=None, size=CACHE_SIZE):
        self.finder, self.size = finder, size
        self.cache, self.lock, self.finder_lock = OrderedDict(), threading.Lock(), threading.Lock()

    def get(self, key, path):
        """The JPEG bytes of the thumbnail of `path`, cached under `key`; ImageError when it cannot be decoded."""
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        data = self.make(path)
        with self.lock:
            self.cache[key] = data
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return data

    def make(self, path):
        image = load_image(path, DETECT_MIN_SIDE if self.finder else SIDE)
        boxes = self._boxes(image)
        scale = min(1.0, SIDE / max(image.size))
        image.thumbnail((SIDE, SIDE))
        draw = ImageDraw.Draw(image)
        for box in boxes:
            draw.rectangle([round(v * scale) for v in box], outline=(255, 212, 0), width=2)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=82)
        return buffer.getvalue()

    def _boxes(self, image):
        if not self.finder:
            return []
        with self.finder_lock:  # MTCNN's networks are not safe to share between threads
            return self.finder.find([image])[0].boxes
