"""syncctl: the control and interlock software of an irradiation synchronizer."""

__version__ = "0.1.0"
