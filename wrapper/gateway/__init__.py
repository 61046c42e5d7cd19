"""The OpenAI-compatible gateway in front of LLaMA-Factory's API servers.

settings.py    one pydantic-settings object: listen address, models -> upstreams, limits
keys.py        API keys stored as SHA-256 hashes in SQLite; the in-memory cache the hot path reads
ratelimit.py   per-key requests-per-minute window
limiter.py     per-upstream concurrency limit with a bounded FIFO queue
checks.py      requests LLaMA-Factory would reject, answered 400 before they reach it
oai.py         OpenAI error objects and the small ASGI response helpers
httpclient.py  the upstream client: keep-alive pools on httptools, typed errors, size limit, no redirects
upstream.py    one route: its pool, its queue (slot()), token counter; failures mapped to OpenAI errors
sse.py         rewrites the upstream's SSE events (model name, usage chunk, [DONE])
usage.py       token counts for the final usage chunk (tokenizer.json when available)
metrics.py     Prometheus text exposition
accesslog.py   one line per request: id, key id, model, status, latency, bytes
app.py         the ASGI app: a lean hot path for chat and score, FastAPI for the rest
small.py       FastAPI for the small endpoints: models, healthz, readyz, metrics, docs
openapi_doc.py the OpenAPI document, the two proxied endpoints included
server.py      serves it on granian (limits, TLS, HTTP/2): CLI (signals) or a thread; graceful drain
"""
