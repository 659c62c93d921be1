"""Ray Train fine-tuning: the driver, the worker loop, cross-validation, the did-it-learn check."""
