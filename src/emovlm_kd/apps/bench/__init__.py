"""`emovlm-kd bench`: its settings (`config`, torch-free for the command line) and its figures."""
