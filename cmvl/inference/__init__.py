"""Using a trained run (`cmvl.load_run`) on a user's own images and texts: prediction, search, explanation."""
