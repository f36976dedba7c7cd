"""secureserve.check.progress: a rich bar on a terminal, nothing elsewhere."""

from __future__ import annotations

import io

from secureserve.check.progress import Progress, TerminalProgress, progress_for


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_terminal_no_bar():
    stream = io.StringIO()
    progress = progress_for(stream)
    assert type(progress) is Progress
    with progress.part("fuzz", 10) as advance:
        advance(10)
    assert stream.getvalue() == ""


def test_on_a_terminal_a_bar_per_part_with_its_description_and_share_done():
    stream = Terminal()
    progress = progress_for(stream)
    assert isinstance(progress, TerminalProgress)
    with progress.part("robustness: HopSkipJump", 4) as advance:
        for _ in range(4):
            advance(1)
    shown = stream.getvalue()
    assert "robustness: HopSkipJump" in shown
    assert "100%" in shown
