"""Errors that reach the user as one clear line (no traceback)."""


class BnstudyError(Exception):
    """Base of the errors bnstudy reports as a single line saying what to do."""


class ConfigError(BnstudyError):
    """An impossible or unknown configuration value."""


class DataError(BnstudyError):
    """A dataset that cannot be found, read or trusted."""


class CheckpointError(BnstudyError):
    """A run folder's checkpoint that cannot be resumed from (corrupt, foreign or not a bnstudy checkpoint)."""
