"""Predicting a handful of files (facesort predict, facesort serve): results as plain, JSON-ready dicts."""
from .faces import CROP_SIDE, FaceFinder
from .images import ImageError, load_image
from .inference import BATCH_SIZE, Classifier


def predict_images(classifier, images, whole_image=False, batch_size=BATCH_SIZE, finder=None, found=None,
                   prepared=False):
    """Predictions for decoded images, in one batched pass (`found`: their faces, when already detected;
    `prepared`: whole images already through `Classifier.prepare`)."""
    if whole_image:
        return classifier.predict_whole(images, batch_size, prepared)
    return classifier.predict_faces(images, finder or FaceFinder(device=classifier.device), batch_size, found)


def as_dict(name, prediction, classifier, image):
    """One result: `size` is the photo's upright [width, height] in its own pixels, and face boxes are in that
    frame, however small a copy of it was decoded."""
    width, height = image.info.get("full_size", image.size)
    sx, sy = width / image.width, height / image.height
    boxes = None if prediction.boxes is None else [
        [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)] for x0, y0, x1, y1 in prediction.boxes]
    return {"path": name, "labels": prediction.labels, "probs": prediction.probs, "faces": prediction.faces,
            "boxes": boxes, "size": [width, height], "threshold": classifier.threshold, "error": ""}


def error_dict(name, error, classifier):
    """The result of an image that could not be read: no labels, the reason in `error`."""
    return {"path": name, "labels": [], "probs": {}, "faces": None, "boxes": None, "size": None,
            "threshold": classifier.threshold, "error": error}


def decode_side(classifier, whole_image):
    """The shortest side worth decoding: the model's input size, or enough to crop faces from."""
    return classifier.size if whole_image else CROP_SIDE


def predict_sources(classifier, sources, whole_image=False, batch_size=BATCH_SIZE, finder=None):
    """Results for (name, source) pairs, a source being a path or a binary file object: every source is decoded,
    the readable ones predicted in one batched pass; unreadable ones carry an error. Names are only labels."""
    images, errors = [], []
    for _, source in sources:
        try:
            images.append(load_image(source, decode_side(classifier, whole_image), classifier.device))
            errors.append("")
        except ImageError as e:
            images.append(None)
            errors.append(str(e))
    predictions = iter(predict_images(classifier, [im for im in images if im is not None], whole_image, batch_size,
                                      finder))
    return [as_dict(name, next(predictions), classifier, image) if image is not None
            else error_dict(name, error, classifier)
            for (name, _), image, error in zip(sources, images, errors)]


def predict_files(paths, model_path=None, threshold=None, whole_image=False, batch_size=BATCH_SIZE, device="auto"):
    """Load the model once and predict every path (facesort predict)."""
    classifier = Classifier(model_path, threshold, whole_image, device)
    return predict_sources(classifier, [(path, path) for path in paths], whole_image, batch_size)
