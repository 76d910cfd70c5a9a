"""inpaint.client: call an inpainting model served by TF Serving or ``inpaint-serve``.

    from inpaint.client import InpaintClient

    with InpaintClient("localhost:8500") as client:
        out = client.inpaint("photo.png", "mask.png")   # uint8 HxWx3

Light on purpose: no TensorFlow, no onnxruntime.
"""

from ._client import AsyncInpaintClient, InpaintClient, RetryPolicy
from ._errors import (
    DeadlineExceeded,
    InpaintError,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    ServerError,
    ServerUnavailable,
)

__all__ = [
    "AsyncInpaintClient",
    "DeadlineExceeded",
    "InpaintClient",
    "InpaintError",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailable",
]
