"""The training side: `watch`/`Monitor`, statistics, clipping, AMP, lanes, commands, serving.

torch, model and wire; never textual, sources or ui.
"""
