"""The self-distilling loop (docs/loop.md).

    candidates.py   the candidate step: the teacher at fewer Euler steps (teacher@N) and
                    the SnapFlow student through the nine gates; the fastest that passes
    choice.py       the choice among gated candidates and each verdict's reason

Modules import their heavy dependencies lazily; this package imports nothing on import.
"""
