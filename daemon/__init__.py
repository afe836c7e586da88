"""digit-inbox: read handwritten digits from scans dropped into a folder."""

__version__ = "0.1.0"
