"""utils.quiet_logging holds warnings back inside the block and restores the caller's own level."""

import logging

from geopak_lib.utils import quiet_logging, quiet_rebuild


def test_quiet_logging_restores_the_callers_state(caplog):
    log = logging.getLogger("geopak_lib.test")
    before = logging.root.manager.disable
    try:
        with quiet_logging():
            log.warning("held back")
            assert logging.root.manager.disable == logging.WARNING
        log.warning("said")
        assert [r.message for r in caplog.records] == ["said"]
        assert logging.root.manager.disable == before
        logging.disable(logging.ERROR)  # a caller that silenced more than warnings
        with quiet_rebuild():
            assert logging.root.manager.disable == logging.ERROR  # not lowered to WARNING
        assert logging.root.manager.disable == logging.ERROR  # and not reset to NOTSET afterwards
        try:
            with quiet_logging(logging.INFO):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert logging.root.manager.disable == logging.ERROR  # restored on an exception too
    finally:
        logging.disable(before)
