"""Transport: the frame codec, record files, the in-process queue, environment names, run entries.

Imports only `gradtui.model`.
"""
