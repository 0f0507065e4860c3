"""Where models come from: builtin packages, the curated catalogue, the Hugging Face Hub."""
