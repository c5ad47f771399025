"""Pure Rich renderables of the viewer (no Textual)."""
