"""LoRA adapters: GGUF LoRA files checked against a base (``gguf_lora``), PEFT folders converted (``peft``)."""
