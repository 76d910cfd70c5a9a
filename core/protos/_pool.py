"""The private descriptor pool that our generated messages live in (see generate.py).

The well-known types our protos import are copied in first, since a pool
resolves imports only among its own files.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
