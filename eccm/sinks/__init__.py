"""Sinks: what consumes snapshots or finished files (records, upload)."""
