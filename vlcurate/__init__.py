"""vlcurate: curate and featurize image-text corpora for vision-language pretraining."""

__version__ = "0.1.0"
