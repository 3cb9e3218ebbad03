"""edge: a doorbell camera daemon that shares footage only with its owner's consent."""

__version__ = "0.1.0"
