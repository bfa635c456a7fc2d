"""The training stages, each a function from artifacts to artifacts:

teacher (images -> fine-tuned classifier), instruct (images + annotations -> tuned VLM),
distill (cached visual features + teacher logits -> head), gate (cached head logits +
VLM class probabilities -> gate). `features` holds the caches they share.
"""
