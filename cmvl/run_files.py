"""The files a training run writes into its run directory (beside config.yaml and checkpoints/)."""

SUMMARY_FILE = "summary.json"  # written when fit ends: best score and checkpoint, the best epoch's metrics, timing
METRICS_CSV = "metrics.csv"  # every logged value by step (CSV logger)
CURVES_PNG = "curves.png"  # training curves drawn from metrics.csv (`cmvl plot RUN_DIR`)
SAMPLES_DIR = "samples"  # samples/epoch<NNN>.png: sample predictions of each validation epoch
