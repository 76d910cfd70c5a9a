"""inpaint.core: what every side of inpaint shares, owned by none of them.

``contract`` (signature and tensor names, dtypes, version states), ``protos``
(TF Serving's messages, wire-compatible), ``tensors`` (TensorProto <-> numpy),
``masks`` (hole generators), ``images`` (image files), ``repository`` (the
model-repository layout and atomic publishing), ``onnx_model`` (an exported
model run in process) and ``envvars`` (each CLI's prefixed environment
variables, the old names refused). Needs only numpy, OpenCV, protobuf and
click; ``onnx_model`` imports onnxruntime when a model is opened.
"""
