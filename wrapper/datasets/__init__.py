"""Datasets: LLaMA-Factory's dataset_info.json (info), the bundled and user registry (registry),
row-by-row checks of data files (check) and the identity set (identity)."""
