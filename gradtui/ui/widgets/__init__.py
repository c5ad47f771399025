"""Textual widgets of the viewer."""
