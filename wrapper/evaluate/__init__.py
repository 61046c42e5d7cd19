"""`lfwrap eval`: a finished run's fine-tuned model against its base model on held-out rows.

plan.py      which rows, which models, which LLaMA-Factory configs (pure: writes nothing)
execute.py   writes the configs and runs them all in one LLaMA-Factory process, following progress
runner.py    that process (standalone: the standard library and LLaMA-Factory only)
metrics.py   metrics.json from what LLaMA-Factory wrote
report.py    predictions.jsonl, loss.png and report.html (report.html.j2)
"""
