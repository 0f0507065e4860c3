"""edgeslm's version, in a module of its own: any module may import it without importing the package's
``__init__`` (whose lazy attributes reach ``generation``)."""

__version__ = "0.1.0"
