"""Launching LLaMA-Factory: run directories, the local and Docker backends, progress, serve, export.

Library API (the CLI is a thin shell over it):
    wrapper.launch.plan     plan_run (pure: what --dry-run shows) → materialize (the only write)
    wrapper.launch.preflight  output folder writable, disk enough for the checkpoints
    wrapper.launch.train    the lifecycle: launch → follow → result; cancel_run, prepare_resume, remove_run
    wrapper.launch.configfile  LLaMA-Factory config files: YAML out and in, a docker run's host view
    wrapper.launch.docker_paths  Docker path mapping: mounts, host ↔ container paths in a config
    wrapper.launch.docker_backend  the container: spec, mount checks, engine, start / stream / stop
    wrapper.launch.local    the local backend: llamafactory-cli, its environment, spawn
    wrapper.launch.runs     run directories, their meta.json, the supervisor's identity, the run lock
    wrapper.launch.process  process identity and groups; stop_group / stop_pids (SIGTERM, grace, SIGKILL)
    wrapper.launch.serve    start_api_server → ServerHandle(url, stop())
    wrapper.launch.export   export_run (merge a run's LoRA adapter into a standalone model)
"""
