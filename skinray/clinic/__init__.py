"""A clinic's own labelled images: reading them, validating the promises, recalibrating."""
