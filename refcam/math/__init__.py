"""The math floor of refcam: pure NumPy/SciPy functions, one per formula.

Nothing in this package imports onnx, onnxruntime or any other floor of refcam.
"""
