"""Fraction recordings: one self-describing file per fraction, written off the hot path,
read back for replay through the core and for the review report."""

from syncctl.recording.reader import Recording, StepRecord, read_recording
from syncctl.recording.recorder import (
    FORMAT,
    SUFFIX,
    FractionRecorder,
    RecorderStats,
    default_path,
    header_for,
)

__all__ = [
    "FORMAT",
    "SUFFIX",
    "FractionRecorder",
    "RecorderStats",
    "Recording",
    "StepRecord",
    "default_path",
    "header_for",
    "read_recording",
]
