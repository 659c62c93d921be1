"""skinray: dermoscopic lesion classification (MobileNetV2) as distributed Ray batch jobs."""

__version__ = "0.1.0"


class SkinrayError(Exception):
    """An error the user can fix; the CLI prints its message as one line, no traceback."""
