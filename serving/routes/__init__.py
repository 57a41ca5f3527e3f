"""One router per resource: ``health`` and ``neighbors``."""
