"""The viewer side's event sources: the `Source` protocol (`base`), a socket stream
(`stream`), attaching to a run (`attach`), the child spawner of `demo` and `run`
(`child`, whose output `logtail` follows), replay, and the synthetic run.

No torch, no textual.
"""
