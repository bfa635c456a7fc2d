"""Models: the VLM adapters, the teacher classifiers, the distilled head and the gates."""
