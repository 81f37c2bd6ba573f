"""Sensors: drift of live traffic, new documents in the source folder, run failures."""
