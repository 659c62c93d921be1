"""A model applied to images: engines and the Ray Data plan, predict, evaluate, export, quantize."""
