"""Screens and dialogs of the viewer."""
