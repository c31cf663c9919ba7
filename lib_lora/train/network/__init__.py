"""The trainable network: one module per network type (LoRA, LoHa, LoKr) on the host's weights."""
