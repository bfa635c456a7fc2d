"""Stage 0: instruction data (key elements and reasoning per training image) from a multimodal model.

`runner.annotate_dataset` asks an OpenAI-compatible endpoint (or a local VLM, see
`backends`) about each training image and appends one record per image to a JSONL file
(`records`) that training reads through `emovlm_kd.data.annotations`;
`summary.summarise_annotations` says what such a file holds. Nothing is imported here, so
the command line can read `config` without loading images or HTTP clients.
"""
