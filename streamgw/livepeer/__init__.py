"""go-livepeer's gateway <-> orchestrator wire: protobuf messages, capabilities, signatures, segment credentials.

Pure values and functions, no sockets. ``lp_rpc_pb2`` and ``lp_rpc_pb2_grpc`` are generated from
``lp_rpc.proto`` by ``scripts/gen_proto.sh``; never edit them by hand.
"""
