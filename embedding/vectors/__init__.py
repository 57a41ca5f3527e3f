"""Item vectors, their files and published versions (read + verify)."""
