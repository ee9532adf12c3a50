"""Ship a trained model: one module per target (hf, onnx, gguf), each with a parity check against
the PyTorch model that runs at the end of the export."""
