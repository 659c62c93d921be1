"""Numbers to decisions, no I/O: metrics with intervals, the operating point, drift, promises."""
