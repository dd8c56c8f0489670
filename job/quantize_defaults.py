"""The INT8 gate's defaults, shared by :mod:`job.quantize` and the command line that shows them in its help
(``python -m job.model_package quantize``), so that the command line does not import the quantizer to build its help.
"""

DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_HELD_OUT_IMAGES = 1000
# At a 99 % threshold one disagreement must be worth at most one percentage point.
MIN_HELD_OUT_IMAGES = 100
DEFAULT_MIN_AGREEMENT = 0.99
