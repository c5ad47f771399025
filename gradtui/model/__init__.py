"""The data model: events, commands and the one rule for applying them, the store, detectors, report.

NumPy and the standard library only; no threads, sockets or files.
"""
