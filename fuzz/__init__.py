"""Fuzz targets for the parsers of untrusted bytes (see fuzz/README.md)."""
