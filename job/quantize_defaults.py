"""The INT8 gate's defaults, shared by :mod:`job.quantize` and the command line that shows them in its help
(``python -m job.model_package quantize``), so that the command line does not import the quantizer to build its help.
"""

from job.package_format import MIN_HELD_OUT_IMAGES  # noqa: F401  (also the least an ONNX twin's check may compare)

DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_HELD_OUT_IMAGES = 1000
DEFAULT_MIN_AGREEMENT = 0.99
