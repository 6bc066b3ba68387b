"""Quiet by default: the commands log what a user needs; libraries' set-up chatter goes to debug.

:func:`configure_logging` is what every command line entry point calls (``chextriev``, and
``python -m server.cli``; the server's worker processes are forked from it and keep it): the
root logger at INFO (DEBUG with ``-v``), and these libraries' INFO lines demoted to DEBUG, so
that they show with ``-v`` only:

* Alembic's plugin set-up and migration-context lines (``setup plugin ...``, ``Context impl
  SQLiteImpl.``, ``Will assume non-transactional DDL.``, the stamp of a new catalog, which the
  indexer reports in its own words) on every catalog open; the steps of ``chextriev db upgrade``
  (``Running upgrade 0001 -> 0002``) stay;
* Faiss's loader (which instruction-set build it tried and loaded);
* Lightning's banners and tips (``GPU available: ...``, ``TPU available: ...``, ``💡 Tip: ...``,
  ``Seed set to ...``, ``LOCAL_RANK: ...``); its other lines (why ``Trainer.fit`` stopped, its
  warnings) stay.

Lightning's model summary table is printed only with ``-v`` too
(:func:`chextriev.training.fit.train_records`). Warnings (WARNING and above) are never demoted.
"""

from __future__ import annotations

import logging

#: Loggers all of whose INFO lines are set-up chatter.
CHATTY_LOGGERS = ("alembic.runtime.plugins", "faiss.loader")
#: Alembic's migration logger and the beginnings of its chatter (its upgrade steps stay).
ALEMBIC_MIGRATION = "alembic.runtime.migration"
ALEMBIC_CHATTER = ("Context impl", "Will assume", "Running stamp_revision")
#: Lightning's loggers of banners and tips, and the beginnings of the lines that are banners.
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                     "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning_fabric.utilities.seed", "lightning.fabric.utilities.seed")
LIGHTNING_BANNERS = ("GPU available", "TPU available", "HPU available", "IPU available", "💡 Tip",
                     "Seed set to", "LOCAL_RANK", "Initializing distributed", "-----", "distributed_backend",
                     "All distributed processes registered")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DemoteToDebug(logging.Filter):
    """Turns the INFO records it is given (all, or those whose message starts with one of
    ``prefixes``) into DEBUG records, emitted only when the root logger shows DEBUG."""

    def __init__(self, prefixes: tuple[str, ...] | None = None):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if self.prefixes is not None and not str(record.getMessage()).lstrip().startswith(self.prefixes):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_libraries() -> None:
    """Demote the libraries' chatter (module docstring) to DEBUG; idempotent."""
    chatty = [(n, None) for n in CHATTY_LOGGERS] + [(ALEMBIC_MIGRATION, ALEMBIC_CHATTER)]
    for name, prefixes in chatty + [(n, LIGHTNING_BANNERS) for n in LIGHTNING_LOGGERS]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DemoteToDebug) for f in logger.filters):
            logger.addFilter(DemoteToDebug(prefixes))


def configure_logging(verbose: bool = False, fmt: str = LOG_FORMAT) -> None:
    """Root logging to stderr at INFO (DEBUG when ``verbose``) in ``fmt``, libraries quiet."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)
    quiet_libraries()
