"""r2.extract: video decoding, preprocessing, frozen CLIP, feature extraction into r2.cache."""
