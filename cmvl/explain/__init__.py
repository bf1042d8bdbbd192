"""Relevance maps of a fusion model's outputs over the image grid (attention, Grad-CAM, rollout), for a batch of
tokens: the maths shared by `cmvl explain` (cmvl/inference/explain.py), the per-epoch sample pictures
(`samples.attention=true`) and scripts/bench_explain.py. Nothing here reads a checkpoint or a dataset."""
