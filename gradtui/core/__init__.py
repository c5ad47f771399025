"""gradtui core: events, commands, wire format, store, detectors. NumPy only."""
