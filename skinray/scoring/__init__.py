"""The nightly run: inputs, staging, the run record, the Delta table, the report and worklist."""
