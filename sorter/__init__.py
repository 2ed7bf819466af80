"""facesort: sort photos into male/, female/ and neither/ with a fastai multi-label model."""
