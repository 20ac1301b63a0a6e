"""The WebUI's progress bar and Interrupt/Skip buttons (``shared.state``), as the job's ``Progress``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..host import InversionInterrupted


class WebUIProgress:
    """``shared.state``: the status text, the step counter and the interrupt flags."""

    def __init__(self) -> None:
        from modules import shared

        self.state = shared.state

    @contextmanager
    def text(self, text: str) -> Iterator[None]:
        """``text`` on the progress bar for the block; what was there before comes back after it."""
        before, self.state.textinfo = self.state.textinfo, text
        try:
            yield
        finally:
            self.state.textinfo = before

    def step(self, done: int, total: int) -> None:
        """Interrupt or Skip end the inversion; otherwise the bar shows how far it is."""
        if self.state.interrupted or self.state.skipped:
            raise InversionInterrupted
        self.state.sampling_step, self.state.sampling_steps = done, total
