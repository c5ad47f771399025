"""The Textual viewer (no torch)."""
