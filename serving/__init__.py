"""inpaint.serving: the ONNX Runtime model server, ``inpaint-serve``.

A request's path, from its bytes on the wire to its reply (each module's docstring holds its own detail):

1. **Transport.** gRPC (``server.create_server``: TF Serving's and the Open Inference Protocol's services,
   health, reflection) and REST (aiohttp, one app: ``rest.RestApi``) on one event loop. ``grpc_transport``
   receives a predict's message only once what it may take while arriving is held from the memory budget,
   counts its value lists on the wire (``wire``) and refuses long ones before parsing, then parses it.
   ``rest_transport`` reads a body piece by piece, each piece held from the budget, inflates gzip and deflate
   itself with a cap, and parses large bodies in a codec process (``rest_codec``) so the loop keeps answering.
2. **Adapters**, one per protocol and transport, and nothing but conversion: ``grpc_api`` and ``rest``
   (TF Serving's API), ``v2_api`` and ``v2_rest`` (the Open Inference Protocol). They check the declared
   shapes against the limits (``inputs``) and have the data plane admit the request before any array is
   built, convert to numpy (in the data plane's decoding threads) and call the data plane.
3. **Data plane** (``dataplane.DataPlane``), the same for every protocol. ``request`` counts and times the
   request, labels its metrics and holds its memory reservation until it ends; while the server drains, it is
   refused (UNAVAILABLE).
   ``models`` (``registry``, ``models``) resolves the name and version (number, label or latest AVAILABLE)
   and keeps the version loaded while the request runs.
4. **Admission** (``admission``): each cost is reserved before it is spent: the message, the decoded
   tensors, the model runs, the tiled path's arrays, the reply. What does not fit waits up to 2 s, then
   RESOURCE_EXHAUSTED; a request over its share of the budget is refused at once.
5. **Decoding.** Arrays: ``inputs.prepare_inputs`` (dtypes, the mask rule). Files (``serving_bytes``): sizes
   read from their headers and JPEG scans counted (``decoding``) before any file is decoded, one pair at a
   time, in the data plane's decoding threads.
6. **Inference.** Images up to ``--tile-above-pixels`` go whole to the model's scheduler (``batching``:
   ``BatchScheduler`` merges same-size requests of a version, ``DirectScheduler`` runs each as it comes),
   whose runs take the compute threads; larger photos run in windows around their holes
   (``core/tiling.py``) on the data plane's own ``tiled`` threads, so they never hold the compute threads.
7. **Detail pass** (``core/detail.py``, in ``DataPlane._inpaint``): the version's fine texture carried into
   the holes, at its amount for images run whole or in windows, in the same threads as their fill.
8. **Encoding and reply.** The adapter builds its reply (protobuf serialized, JSON in the codec process when
   large, PNG files encoded in the decoding threads) while the reservation is still held. Any failure
   becomes its status in one place per transport (``grpc_transport.call``, ``rest_transport.respond``)
   through one table (``errors``).

``server.InpaintServer`` builds and owns all of it, from start to drain and stop (``shutdown``).
"""
