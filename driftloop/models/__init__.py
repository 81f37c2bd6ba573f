"""Model loading: resolve names to local files, pick precision from the hardware."""
