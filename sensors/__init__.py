"""Sensors: run failures now; drift and new-data sensors join as the loop is built."""
