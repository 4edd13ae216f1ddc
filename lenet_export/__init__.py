"""lenet-export: train LeNet-family networks and ship them as TorchScript and ONNX.

Importing this package is cheap and torch-free; torch is imported only by the modules that
train, export or verify. Embedding apps use `lenet_export.runtime` (numpy + onnxruntime only).
"""

__version__ = "0.1.0"
