"""Export: turns a bertserve model directory into a parity-checked, published ONNX artifact."""
