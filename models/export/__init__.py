"""Export: Optimum ONNX variants (fp32, int8, fp16) checked for parity, written as a serving bundle."""
