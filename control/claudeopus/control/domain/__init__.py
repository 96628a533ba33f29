"""Domain rules of the control plane. Nothing here imports grpc."""
