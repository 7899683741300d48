"""Where a pipeline's messages go: the log by default, the terminal for the command line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import PredictSummary

logger = logging.getLogger("refseg.pipelines")


class Reporter:
    """Receives a pipeline's messages; this one logs them. Subclass it to show them elsewhere.

    Only the process that writes the run's files (rank 0 of a multi-process run) reports.
    """

    def step(self, message: str) -> None:
        """A step begins or ends (``[2/4] building the memory bank``)."""
        logger.info("%s", message)

    def warn(self, message: str) -> None:
        """Something the user should know but that does not stop the run."""
        logger.warning("%s", message)

    def predicted(self, summary: PredictSummary) -> None:
        """The predict step is done (on the process that merged the results)."""
        logger.info("%d instances -> %s", summary.instances, summary.out_path)
