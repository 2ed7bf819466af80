"""Predicting a handful of files (facesort predict, facesort serve): results as plain, JSON-ready dicts."""
from .faces import DETECT_SIDE, FaceFinder
from .images import ImageError, load_image
from .inference import Classifier


def predict_images(classifier, images, whole_image=False, batch_size=64, finder=None):
    """Predictions for decoded images, in one batched pass."""
    if whole_image:
        return classifier.predict_whole(images, batch_size)
    return classifier.predict_faces(images, finder or FaceFinder(), batch_size)


def as_dict(name, prediction, classifier):
    return {"path": name, "labels": prediction.labels, "probs": prediction.probs, "faces": prediction.faces,
            "boxes": prediction.boxes, "threshold": classifier.threshold, "error": ""}


def predict_files(paths, model_path=None, threshold=None, whole_image=False, batch_size=64):
    """Load the model once, decode every path, predict the readable ones; unreadable ones carry an error."""
    classifier = Classifier(model_path, threshold)
    decoded = {}
    errors = {}
    for path in paths:
        try:
            decoded[path] = load_image(path, classifier.size if whole_image else DETECT_SIDE * 3 // 4)
        except ImageError as e:
            errors[path] = str(e)
    predictions = dict(zip(decoded, predict_images(classifier, list(decoded.values()), whole_image, batch_size)))
    return [as_dict(path, predictions[path], classifier) if path in predictions
            else {"path": path, "labels": [], "probs": {}, "faces": None, "boxes": None,
                  "threshold": classifier.threshold, "error": errors[path]}
            for path in paths]
