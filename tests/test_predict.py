"""facesort predict: what it reports about a photo is in the photo's own pixels, not in the small copy decoded."""
import json
from pathlib import Path

import pytest
from PIL import Image

from sorter.faces import FaceFinder
from sorter.images import load_image

ASTRONAUT = Path(__file__).parent.parent / "data" / "sample" / "people" / "astronaut.jpg"


def phone_photo(path, orientation):
    """The sample astronaut as a 2048x1536 JPEG (decoded at 1/4 scale for face detection), with an EXIF turn."""
    with Image.open(ASTRONAUT) as im:
        photo = im.crop((0, 64, 512, 448)).resize((2048, 1536))
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.save(path, quality=90, exif=exif)
    return path


@pytest.mark.parametrize("orientation, size", [(1, [2048, 1536]), (6, [1536, 2048])])
def test_size_and_face_boxes_are_in_the_photos_own_upright_pixels(cli, colour_model, tmp_path, orientation, size):
    path = phone_photo(tmp_path / "phone.jpg", orientation)
    result = cli("predict", "--json", path, "--model", colour_model)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["size"] == size and answer["faces"] == 1
    [expected] = FaceFinder().find([load_image(path)])[0].boxes  # detected on the photo decoded whole
    [box] = answer["boxes"]
    assert box == pytest.approx(expected, abs=0.02 * max(size))
    assert box[2] - box[0] > 200  # a face of the big photo, not of the 512-pixel copy
