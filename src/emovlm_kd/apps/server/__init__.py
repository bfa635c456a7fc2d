"""`emovlm-kd serve`: a trained run over HTTP.

- `app.py`        the FastAPI app: /v1/classify, OpenAI-compatible /v1/chat/completions and
                  /v1/models, the web page at /, /health, /metrics (Prometheus) and
                  /metrics.json
- `batching.py`   the one worker thread that owns the model, fed by a bounded queue
- `payloads.py`   reading requests (multipart, JSON, base64, data URLs, chat messages)
- `security.py`   API key, body size limit, SSRF-safe image URL fetching
- `metrics.py`    request counts, latencies, queue depth, batch sizes, model time
- `config.py`     `ServerConfig`, from which the command line is built
- `static/`       the web page (one self-contained file)

Needs the `serve` extra: fastapi, uvicorn, python-multipart, prometheus-client.
"""
