"""Make a trained model smaller: quantization (int8, int4, dynamic int8) and knowledge distillation."""
