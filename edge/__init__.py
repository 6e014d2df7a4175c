"""poseface-edge device runtime.

Runs with numpy, OpenCV and one inference runtime (onnxruntime or the LiteRT/TFLite
interpreter). Nothing in this package imports torch: training/ and quantization/ import
from here, never the other way round.
"""

__version__ = "0.1.0"
