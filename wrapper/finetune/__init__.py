"""Fine-tuning jobs as a service, below the HTTP layer (OpenAI's /v1/files and /v1/fine_tuning/jobs).

settings  the `fine_tuning:` block of the gateway settings
store     SQLite (one file, WAL): files, jobs, events, checkpoints, pooled servers
objects   OpenAI-shaped file / job / event / checkpoint dicts, ids, list pagination
rows      OpenAI's chat and preference rows → LLaMA-Factory rows
files     uploads: size limit, sha256, row check, conversion
jobs      job requests, resolved hyperparameters, the job's run folder
worker    runs queued jobs through the launcher, follows them, cancels, recovers after a restart
pool      an API server per fine-tuned model, on demand, stopped when idle
"""
