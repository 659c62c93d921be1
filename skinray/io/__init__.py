"""Bytes in and out: local folders and S3 behind one URI scheme, listings, atomic single-PUT writes."""
