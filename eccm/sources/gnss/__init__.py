"""GNSS receivers: NMEA parsing (pure) and the reader thread."""
