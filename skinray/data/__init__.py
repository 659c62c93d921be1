"""Manifests and images to the prepared, lesion-grouped split; image decoding; synthetic data."""
