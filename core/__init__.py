"""inpaint.core: what every side of inpaint shares, owned by none of them.

``contract`` (signature and tensor names, dtypes, version states), ``protos``
(TF Serving's messages, wire-compatible), ``tensors`` (TensorProto <-> numpy),
``masks`` (hole generators), ``images`` (image files), ``repository`` (the
model-repository layout and atomic publishing) and ``onnx_model`` (an exported
model run in process). Needs only numpy, OpenCV and protobuf; ``onnx_model``
imports onnxruntime when a model is opened.
"""
