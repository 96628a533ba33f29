"""Generated gRPC code for claudeopus.v1 (do not edit; see scripts/generate_protos.py)."""
